// Building a prompt's preference pair from its scored responses.
//
// chosen = the highest-reward response, rejected = the lowest; on equal
// rewards the earliest candidate wins, so results never depend on sort
// stability. With `merge`, the prompt's previous pair competes with the new
// responses, so a lucky earlier sample is not thrown away.

import type { PromptPair } from "./pool.js";

export interface ScoredResponse {
  /** Response token ids (without the prompt). */
  ids: Int32Array;
  reward: number;
  /**
   * Sequence log-probability under the reference model; null while not computed. Only the responses that end up
   * as chosen or rejected need it (see argmaxArgmin), so the loop computes it for those alone.
   */
  refLogp: number | null;
}

export interface BuildPairOptions {
  /** Loop iteration that generated the responses. */
  iteration: number;
  /** Pairs whose reward gap is below this are kept but not trained on. */
  tieThreshold: number;
  /** Also consider the previous pair's two responses (listed before the new ones). */
  merge: boolean;
}

/**
 * The candidate list buildPair picks from: the previous pair's two responses (when merging) before the new ones.
 * Exposed so the loop can find the picked responses first and compute reference log-probs for them only.
 */
export function pairCandidates(
  responses: readonly ScoredResponse[],
  previous: PromptPair | null,
  merge: boolean,
): ScoredResponse[] {
  const candidates: ScoredResponse[] = [];
  if (merge && previous !== null) {
    candidates.push({ ids: previous.chosenIds, reward: previous.rewardChosen, refLogp: previous.refLogpChosen });
    candidates.push({ ids: previous.rejectedIds, reward: previous.rewardRejected, refLogp: previous.refLogpRejected });
  }
  candidates.push(...responses);
  return candidates;
}

/** Index of the first maximum and first minimum reward. */
export function argmaxArgmin(rewards: readonly number[]): { best: number; worst: number } {
  if (rewards.length === 0) throw new RangeError("argmaxArgmin of no rewards");
  let best = 0;
  let worst = 0;
  for (let i = 1; i < rewards.length; i++) {
    const r = rewards[i] as number;
    if (r > (rewards[best] as number)) best = i;
    if (r < (rewards[worst] as number)) worst = i;
  }
  return { best, worst };
}

/**
 * The pair for one prompt. Candidates are the new responses, preceded by the
 * previous pair's chosen and rejected responses when merging (so on equal
 * rewards the old pair is kept). allRewards lists every candidate's reward.
 * The candidates picked as chosen and rejected must carry refLogp.
 * A pair is trainable only when its gap is positive and >= tieThreshold:
 * chosen and rejected with equal rewards carry no preference.
 */
export function buildPair(
  responses: readonly ScoredResponse[],
  previous: PromptPair | null,
  options: BuildPairOptions,
): PromptPair {
  if (responses.length === 0) throw new RangeError("buildPair needs at least one response");
  if (!(options.tieThreshold >= 0)) throw new RangeError(`tieThreshold must be >= 0, got ${options.tieThreshold}`);

  const candidates = pairCandidates(responses, previous, options.merge);

  const rewards = candidates.map((c, i) => {
    if (!Number.isFinite(c.reward)) throw new RangeError(`candidate ${i} has a non-finite reward ${c.reward}`);
    return c.reward;
  });
  const { best, worst } = argmaxArgmin(rewards);
  const chosen = candidates[best] as ScoredResponse;
  const rejected = candidates[worst] as ScoredResponse;
  if (chosen.refLogp === null || rejected.refLogp === null) {
    throw new Error("buildPair: the chosen and rejected responses need their reference log-probs");
  }
  const gap = chosen.reward - rejected.reward;
  return {
    chosenIds: chosen.ids,
    rejectedIds: rejected.ids,
    rewardChosen: chosen.reward,
    rewardRejected: rejected.reward,
    refLogpChosen: chosen.refLogp,
    refLogpRejected: rejected.refLogp,
    iteration: options.iteration,
    allRewards: rewards,
    trainable: gap > 0 && gap >= options.tieThreshold,
  };
}
