// One iteration's training: E epochs of shuffled minibatches over the pool's trainable pairs, with DPO, IPO or
// weighted DPO against the cached reference log-probs.

import type { AdamWOptions, EngineModel, LossName, SequenceInput, TrainStats } from "../engine/index.js";
import { packBatch } from "../engine/index.js";
import type { Rng } from "../util/random.js";
import { pairMinibatches } from "./minibatches.js";
import type { Pool, TrainablePair } from "./pool.js";
import { pairWeights, type WeightFn } from "./weights.js";

export interface LossSettings {
  type: "dpo" | "ipo" | "wdpo" | "hinge" | "simpo";
  beta: number;
  /** dpo, wdpo and simpo: conservative DPO's share of flipped preferences; 0 = plain DPO. */
  labelSmoothing: number;
  /** simpo: target margin between the chosen and rejected mean token log-probs (times beta). */
  simpoGamma: number;
  beta2: number;
  weightFn: Exclude<WeightFn, "none">;
}

export interface TrainSettings {
  loss: LossSettings;
  optimizer: Partial<AdamWOptions>;
  batchPairs: number;
  epochs: number;
  /** Skip a minibatch whose step the engine refuses for a non-finite gradient, instead of stopping. */
  skipNonFinite?: boolean;
}

export interface Summary {
  mean: number;
  min: number;
  max: number;
  std: number;
}

export interface TrainSummary {
  /** Steps applied. */
  steps: number;
  /** Minibatches skipped because their gradient was NaN or Inf (only with skipNonFinite). */
  skippedSteps: number;
  /** Trainable pairs in the pool (each visited `epochs` times). */
  pairs: number;
  /** Means over the iteration's pairs (NaN when nothing was trained). */
  loss: number;
  accuracy: number;
  margin: number;
  chosenReward: number;
  rejectedReward: number;
  /** Per-pair loss weights as used (all 1 for dpo and ipo); null when nothing was trained. */
  weights: Summary | null;
  /** True when shouldStop ended training early. */
  stopped: boolean;
}

export interface TrainHooks {
  /** Checked before every step. */
  shouldStop?: () => boolean;
  onStep?: (done: number, total: number) => void;
}

/**
 * A training step the engine refused because its gradient was NaN or Inf (as a NaN loss makes it); the
 * weights and AdamW state are unchanged. The message keeps the engine's text and says which step it was.
 */
export class NonFiniteStepError extends Error {
  constructor(
    readonly step: number,
    readonly totalSteps: number,
    engineMessage: string,
    options?: ErrorOptions,
  ) {
    super(`training step ${step}/${totalSteps}: ${engineMessage}`, options);
    this.name = "NonFiniteStepError";
  }
}

/** The engine's refusal of a step with a non-finite gradient (native/core/adamw.cpp); its text is the only marker. */
function isNonFiniteGradient(err: unknown): err is Error {
  return err instanceof Error && err.message.startsWith("non-finite gradient");
}

export function summarize(values: readonly number[]): Summary | null {
  if (values.length === 0) return null;
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const mean = sum / values.length;
  let squares = 0;
  for (const v of values) squares += (v - mean) * (v - mean);
  return { mean, min, max, std: Math.sqrt(squares / values.length) };
}

function engineLoss(type: LossSettings["type"]): LossName {
  return type === "wdpo" ? "dpo" : type;
}

function minibatchWeights(batch: readonly TrainablePair[], loss: LossSettings): Float64Array {
  const gaps = batch.map(({ pair }) => pair.rewardChosen - pair.rewardRejected);
  return pairWeights(gaps, loss.type === "wdpo" ? loss.weightFn : "none", loss.beta2);
}

async function trainMinibatch(
  policy: EngineModel,
  batch: readonly TrainablePair[],
  promptIds: ReadonlyMap<number, Int32Array>,
  weights: Float64Array,
  settings: TrainSettings,
): Promise<TrainStats> {
  const sequences: SequenceInput[] = [];
  for (const { promptId, pair } of batch) {
    const prompt = promptIds.get(promptId);
    if (prompt === undefined) throw new Error(`no prompt ids for pool prompt ${promptId}`);
    sequences.push({ prompt, response: pair.chosenIds }, { prompt, response: pair.rejectedIds });
  }
  const loss = engineLoss(settings.loss.type);
  return policy.trainStep({
    loss,
    batch: packBatch(sequences),
    chosen: batch.map((_, j) => 2 * j),
    rejected: batch.map((_, j) => 2 * j + 1),
    weights,
    // SimPO compares the policy with nothing: the pool's cached reference log-probs serve only the KL metric then
    ...(loss === "simpo"
      ? { simpoGamma: settings.loss.simpoGamma }
      : {
          refChosen: batch.map(({ pair }) => pair.refLogpChosen),
          refRejected: batch.map(({ pair }) => pair.refLogpRejected),
        }),
    beta: settings.loss.beta,
    ...(settings.loss.labelSmoothing > 0 ? { labelSmoothing: settings.loss.labelSmoothing } : {}),
    optimizer: settings.optimizer,
  });
}

export async function trainOnPool(
  policy: EngineModel,
  pool: Pool,
  promptIds: ReadonlyMap<number, Int32Array>,
  settings: TrainSettings,
  rng: Rng,
  hooks: TrainHooks = {},
): Promise<TrainSummary> {
  const batches = pairMinibatches(pool, { batchSize: settings.batchPairs, epochs: settings.epochs }, rng);
  const pairs = batches.reduce((n, b) => n + b.length, 0) / Math.max(1, settings.epochs);
  const totals = { loss: 0, accuracy: 0, margin: 0, chosenReward: 0, rejectedReward: 0, pairs: 0 };
  const allWeights: number[] = [];
  let steps = 0;
  let skippedSteps = 0;
  let stopped = false;
  for (const [index, batch] of batches.entries()) {
    if (hooks.shouldStop?.() === true) {
      stopped = true;
      break;
    }
    const weights = minibatchWeights(batch, settings.loss);
    let stats: TrainStats;
    try {
      stats = await trainMinibatch(policy, batch, promptIds, weights, settings);
    } catch (err) {
      if (!isNonFiniteGradient(err)) throw err;
      if (settings.skipNonFinite !== true) throw new NonFiniteStepError(index + 1, batches.length, err.message, { cause: err });
      // The engine left weights and moments untouched, so skipping is the same as never having drawn this batch.
      skippedSteps += 1;
      hooks.onStep?.(steps + skippedSteps, batches.length);
      continue;
    }
    for (const w of weights) allWeights.push(w);
    const n = stats.nPairs;
    totals.loss += stats.loss * n;
    totals.accuracy += stats.accuracy * n;
    totals.margin += stats.margin * n;
    totals.chosenReward += stats.chosenReward * n;
    totals.rejectedReward += stats.rejectedReward * n;
    totals.pairs += n;
    steps += 1;
    hooks.onStep?.(steps + skippedSteps, batches.length);
  }
  const mean = (sum: number) => (totals.pairs > 0 ? sum / totals.pairs : Number.NaN);
  return {
    steps,
    skippedSteps,
    pairs,
    loss: mean(totals.loss),
    accuracy: mean(totals.accuracy),
    margin: mean(totals.margin),
    chosenReward: mean(totals.chosenReward),
    rejectedReward: mean(totals.rejectedReward),
    weights: summarize(allWeights),
    stopped,
  };
}
