// One metrics.jsonl record per iteration (iteration 0 = the starting policy, evaluated before any training).
// Means that do not exist (nothing trained, nothing regenerated) are written as null.

import { readFileSync } from "node:fs";

import { appendLineAtomic, writeFileAtomic } from "../util/atomic.js";
import type { ResponseStats } from "./evaluate.js";
import type { Summary } from "./train.js";

export interface IterationMetrics {
  iteration: number;
  /** Proxy reward (the optimized reward source). */
  proxy: {
    /** Mean reward of the chosen / rejected response of this iteration's new pairs, and of all their samples. */
    chosen: number | null;
    rejected: number | null;
    mean: number | null;
    /** Mean proxy reward of the sampled eval responses (compare with gold.sampled: the same responses). */
    evalSampled: number;
  };
  /** Evaluation (gold) reward on the eval prompts, with standard errors over prompts. */
  gold: { greedy: number; greedySe: number; sampled: number; sampledSe: number };
  /** Fraction of eval responses with higher gold than the starting policy's (ties count 1/2). */
  winRate: { greedy: number; sampled: number };
  /** Mean over sampled eval responses of sum(logp_policy - logp_ref). */
  kl: number;
  /**
   * Response lengths, to watch DPO's pull toward longer answers: the eval responses' mean length in generated
   * tokens (end-of-sequence included) and the share that ended with end-of-sequence; the mean length of this
   * iteration's new chosen and rejected responses (null when none). Absent in lines written by earlier versions.
   */
  lengths?: ResponseStats & { chosen: number | null; rejected: number | null };
  train: {
    loss: number | null;
    accuracy: number | null;
    margin: number | null;
    chosenReward: number | null;
    rejectedReward: number | null;
    steps: number;
    /** Minibatches skipped for a non-finite gradient (optim.skipNonFinite). */
    skippedSteps: number;
    pairs: number;
  };
  weights: Summary | null;
  generation: {
    promptsRegenerated: number;
    tokensGenerated: number;
    /** Responses whose reference log-probs were computed this iteration (new pool entries, or a refresh). */
    referenceSequences: number;
    trainablePairs: number;
  };
  seconds: { generation: number; scoring: number; training: number; evaluation: number; total: number };
}

/** NaN and infinities become null, so every line is valid JSON. */
function finiteOrNull(_key: string, value: unknown): unknown {
  return typeof value === "number" && !Number.isFinite(value) ? null : value;
}

export function formatMetrics(metrics: IterationMetrics): string {
  return JSON.stringify(metrics, finiteOrNull);
}

export function appendMetrics(path: string, metrics: IterationMetrics): void {
  appendLineAtomic(path, formatMetrics(metrics));
}

export function readMetrics(path: string): IterationMetrics[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const records: IterationMetrics[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      records.push(JSON.parse(line) as IterationMetrics);
    } catch (err) {
      throw new Error(
        `${path}:${i + 1}: not a metrics record (${err instanceof Error ? err.message : String(err)}); optune ` +
          "appends whole lines, so the file was changed by something else: restore that line or remove it",
        { cause: err },
      );
    }
  });
  return records;
}

/** Drops records past `lastIteration` (written after the last saved state, by an interrupted run). */
export function truncateMetrics(path: string, lastIteration: number): IterationMetrics[] {
  const kept = readMetrics(path).filter((m) => m.iteration <= lastIteration);
  writeFileAtomic(path, kept.map((m) => `${formatMetrics(m)}\n`).join(""));
  return kept;
}
