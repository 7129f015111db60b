// Evaluation on the held-out prompts: the evaluation reward (gold, for the built-in task) of greedy and sampled
// responses, the proxy reward of the same sampled responses (to see the proxy run away from gold), and a KL
// estimate to the reference: the mean over sampled responses of sum_t (log p_policy - log p_ref). With the default
// sampling (temperature 1, no top-k/top-p) the samples come from the policy, so that is an unbiased estimate of
// KL(policy || reference); with other sampling settings it is only indicative.

import type { EngineModel } from "../engine/index.js";
import { scoreChecked, type RewardSource } from "../rewards/source.js";
import type { Task } from "../tasks/task.js";
import { generateResponses, rewardBatchOf, type SamplingSettings } from "./generate.js";
import { sequenceLogps } from "./reference.js";

export interface EvalSettings {
  samplesPerPrompt: number;
  sampling: SamplingSettings;
  /** The same every iteration, so iterations are compared on the same random draws. */
  seed: number;
}

export interface EvalResult {
  /** Per eval prompt, the evaluation reward of its greedy response. */
  greedy: number[];
  /** Per eval prompt, the evaluation reward of each sampled response. */
  sampled: number[][];
  /** Mean proxy reward of the sampled responses. */
  proxySampled: number;
  /** Mean over sampled responses of sum(logp_policy - logp_ref). */
  kl: number;
  /** Mean length in generated tokens (end-of-sequence included) and share ended by end-of-sequence. */
  responses: ResponseStats;
}

export interface ResponseStats {
  greedyLength: number;
  sampledLength: number;
  greedyEos: number;
  sampledEos: number;
}

export interface MeanWithError {
  mean: number;
  /** Standard error of the mean over eval prompts. */
  se: number;
}

export function meanWithError(values: readonly number[]): MeanWithError {
  const n = values.length;
  if (n === 0) return { mean: Number.NaN, se: Number.NaN };
  const mean = values.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { mean, se: Number.NaN };
  const variance = values.reduce((a, v) => a + (v - mean) * (v - mean), 0) / (n - 1);
  return { mean, se: Math.sqrt(variance / n) };
}

function meanOf(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Per-prompt means of the sampled rewards (the unit the standard error is computed over). */
export function perPromptSampled(result: EvalResult): number[] {
  return result.sampled.map(meanOf);
}

/**
 * Fraction of eval items where `current` beats `initial` (a tie counts one half); items pair up by prompt and
 * sample index, which share their random stream.
 */
export function winRate(current: readonly number[], initial: readonly number[]): number {
  if (current.length !== initial.length) throw new RangeError(`winRate: ${current.length} vs ${initial.length} items`);
  if (current.length === 0) return Number.NaN;
  let wins = 0;
  current.forEach((c, i) => {
    const b = initial[i] as number;
    if (c > b) wins += 1;
    else if (c === b) wins += 0.5;
  });
  return wins / current.length;
}

export async function evaluatePolicy(
  policy: EngineModel,
  reference: EngineModel,
  task: Task,
  evalSource: RewardSource,
  proxySource: RewardSource,
  settings: EvalSettings,
): Promise<EvalResult> {
  const prompts = task.evalPrompts;
  const greedyGen = await generateResponses(policy, task, prompts, {
    samplesPerPrompt: 1,
    sampling: { ...settings.sampling, temperature: 0 },
    seed: settings.seed,
  });
  const sampledGen = await generateResponses(policy, task, prompts, {
    samplesPerPrompt: settings.samplesPerPrompt,
    sampling: settings.sampling,
    seed: settings.seed,
  });
  const greedy = await scoreChecked(evalSource, rewardBatchOf(prompts, greedyGen.responses));
  const sampledBatch = rewardBatchOf(prompts, sampledGen.responses);
  const sampledFlat = await scoreChecked(evalSource, sampledBatch);
  const proxy = await scoreChecked(proxySource, sampledBatch);

  const flat = sampledGen.responses.flat();
  const refLogps = await sequenceLogps(
    reference,
    sampledBatch.prompts.map((p, i) => ({ prompt: p.ids, response: sampledBatch.responses[i]!.ids })),
  );
  const kl = meanOf(flat.map((r, i) => r.policyLogp - (refLogps[i] as number)));

  const k = settings.samplesPerPrompt;
  const sampled = prompts.map((_, i) => sampledFlat.slice(i * k, (i + 1) * k));
  const greedyFlat = greedyGen.responses.flat();
  const responses = {
    greedyLength: meanOf(greedyFlat.map((r) => r.ids.length)),
    sampledLength: meanOf(flat.map((r) => r.ids.length)),
    greedyEos: meanOf(greedyFlat.map((r) => (r.endedWithEos ? 1 : 0))),
    sampledEos: meanOf(flat.map((r) => (r.endedWithEos ? 1 : 0))),
  };
  return { greedy, sampled, proxySampled: meanOf(proxy), kl, responses };
}
