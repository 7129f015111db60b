// Sampling K responses per prompt with the policy. Each prompt samples from its own random stream (its id), so a
// prompt's responses do not depend on which other prompts were selected alongside it.

import type { EngineModel } from "../engine/index.js";
import type { RewardPrompt, RewardResponse } from "../rewards/source.js";
import type { Task, TaskPrompt } from "../tasks/task.js";

export interface SamplingSettings {
  temperature: number;
  topK: number;
  topP: number;
  maxNewTokens: number;
}

export interface GeneratedResponse extends RewardResponse {
  /** Sum of the response's token log-probs under the policy (temperature 1, unfiltered). */
  policyLogp: number;
}

export interface Generation {
  /** responses[i] are the samples of prompts[i]. */
  responses: GeneratedResponse[][];
  tokensGenerated: number;
}

export interface GenerateOptions {
  samplesPerPrompt: number;
  sampling: SamplingSettings;
  seed: number;
}

export async function generateResponses(
  policy: EngineModel,
  task: Task,
  prompts: readonly TaskPrompt[],
  options: GenerateOptions,
): Promise<Generation> {
  if (prompts.length === 0) return { responses: [], tokensGenerated: 0 };
  const k = options.samplesPerPrompt;
  const result = await policy.sample({
    prompts: prompts.map((p) => p.ids),
    nSamples: k,
    maxNewTokens: options.sampling.maxNewTokens,
    temperature: options.sampling.temperature,
    topK: options.sampling.topK,
    topP: options.sampling.topP,
    stopTokens: task.stopTokens,
    ...(task.vocabLimit === undefined ? {} : { vocabLimit: task.vocabLimit }),
    seed: options.seed,
    streamIds: prompts.map((p) => p.id),
  });
  const responses = prompts.map((_, i) => {
    const list: GeneratedResponse[] = [];
    for (let s = 0; s < k; s++) {
      const r = i * k + s;
      const start = result.offsets[r] as number;
      const end = result.offsets[r + 1] as number;
      const ids = result.tokens.slice(start, end);
      let policyLogp = 0;
      for (let t = start; t < end; t++) policyLogp += result.tokenLogps[t] as number;
      list.push({ ...task.decode(ids), ids, policyLogp });
    }
    return list;
  });
  return { responses, tokensGenerated: result.tokens.length };
}

/** The reward batch of all responses, prompt-major (prompt i's samples together). */
export function rewardBatchOf(prompts: readonly TaskPrompt[], responses: readonly (readonly RewardResponse[])[]) {
  const batchPrompts: RewardPrompt[] = [];
  const batchResponses: RewardResponse[] = [];
  prompts.forEach((prompt, i) => {
    for (const response of responses[i] ?? []) {
      batchPrompts.push({ text: prompt.text, ids: prompt.ids });
      batchResponses.push(response);
    }
  });
  return { prompts: batchPrompts, responses: batchResponses };
}
