// Which prompts get fresh responses this iteration.
//
// OPTune regenerates only the prompts whose current pair looks worst (lowest
// statistic), on the premise that prompts with good responses already gain
// little from resampling. `uniform` is the ablation that spends the same
// budget on random prompts; `all` is plain online iterative DPO.

import type { Rng } from "../util/random.js";
import { sortedEntries, type Pool, type PoolEntry } from "./pool.js";

export type SelectionStrategy = "optune" | "uniform" | "all";
export type SelectionStatistic = "chosen" | "mean" | "gap" | "zscore";

export interface SelectionOptions {
  strategy: SelectionStrategy;
  /** Fraction of the pool to regenerate, in (0, 1]. */
  rho: number;
  statistic: SelectionStatistic;
}

// Absorbs float error in rho * n (e.g. 0.29 * 100 = 28.999999999999996).
const ROUNDING_SLACK = 1e-9;

/**
 * Number of prompts regenerated: floor(rho * n), but at least 1 when the pool
 * is non-empty (a tiny rho must still make progress) and at most n. Floor
 * rather than round keeps the compute budget an upper bound of rho.
 */
export function selectionCount(n: number, rho: number): number {
  if (!(rho > 0 && rho <= 1)) throw new RangeError(`rho must be in (0, 1], got ${rho}`);
  if (n === 0) return 0;
  return Math.min(n, Math.max(1, Math.floor(rho * n + ROUNDING_SLACK)));
}

function mean(values: readonly number[]): number {
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/**
 * The statistic of a prompt's current pair (lower = regenerate sooner);
 * null when it has no pair yet.
 *   chosen: reward of the chosen response
 *   mean:   mean reward of the responses the pair was built from
 *   gap:    rewardChosen - rewardRejected (a small gap teaches little)
 *   zscore: chosen reward standardized by the mean and population std of the
 *           prompt's own history of chosen rewards; 0 when the history has
 *           fewer than 2 entries or zero spread
 */
export function promptStatistic(entry: PoolEntry, statistic: SelectionStatistic): number | null {
  const pair = entry.pair;
  if (pair === null) return null;
  switch (statistic) {
    case "chosen":
      return pair.rewardChosen;
    case "mean":
      return pair.allRewards.length > 0 ? mean(pair.allRewards) : (pair.rewardChosen + pair.rewardRejected) / 2;
    case "gap":
      return pair.rewardChosen - pair.rewardRejected;
    case "zscore": {
      const history = entry.history;
      if (history.length < 2) return 0;
      const m = mean(history);
      const variance = mean(history.map((v) => (v - m) * (v - m)));
      const std = Math.sqrt(variance);
      return std > 0 ? (pair.rewardChosen - m) / std : 0;
    }
  }
}

/**
 * Prompt ids to regenerate, in ascending id order.
 *  - all:     every prompt.
 *  - optune:  exactly selectionCount(n, rho) prompts: those without a pair
 *             first, then the lowest statistic; ties by ascending prompt id.
 *  - uniform: the same count drawn uniformly without replacement with `rng`.
 */
export function selectPrompts(pool: Pool, options: SelectionOptions, rng: Rng): number[] {
  const entries = sortedEntries(pool);
  if (options.strategy === "all") return entries.map((e) => e.promptId);

  const count = selectionCount(entries.length, options.rho);
  let picked: number[];
  if (options.strategy === "uniform") {
    picked = rng.sample(entries.map((e) => e.promptId), count);
  } else {
    const ranked = entries.map((entry) => {
      const value = promptStatistic(entry, options.statistic);
      if (value !== null && Number.isNaN(value)) {
        throw new RangeError(`prompt ${entry.promptId} has a NaN '${options.statistic}' statistic`);
      }
      return { promptId: entry.promptId, value };
    });
    ranked.sort((a, b) => {
      if (a.value === null || b.value === null) {
        if (a.value === null && b.value !== null) return -1;
        if (a.value !== null && b.value === null) return 1;
      } else if (a.value !== b.value) {
        return a.value - b.value;
      }
      return a.promptId - b.promptId;
    });
    picked = ranked.slice(0, count).map((r) => r.promptId);
  }
  return picked.sort((a, b) => a - b);
}
