// Turning freshly scored responses into the regenerated prompts' new pairs. Reference log-probs are computed only
// for the responses that become chosen or rejected (in one batched call), then cached in the pair.

import type { EngineModel, SequenceInput } from "../engine/index.js";
import type { TaskPrompt } from "../tasks/task.js";
import { argmaxArgmin, buildPair, pairCandidates, type ScoredResponse } from "./pairs.js";
import { getEntry, setPair, type Pool } from "./pool.js";
import { sequenceLogps } from "./reference.js";

export interface PairSettings {
  iteration: number;
  tieThreshold: number;
  merge: boolean;
}

export interface PoolUpdate {
  /** Sequences whose reference log-probs were computed (each new response that entered the pool, once). */
  referenceSequences: number;
}

/**
 * Gives each prompt a new pair built from its responses (and, with merge, its previous pair).
 * ids[i][k] and rewards[i][k] are response k of prompts[i].
 */
export async function updatePairs(
  pool: Pool,
  reference: EngineModel,
  prompts: readonly TaskPrompt[],
  ids: readonly (readonly Int32Array[])[],
  rewards: readonly (readonly number[])[],
  settings: PairSettings,
): Promise<PoolUpdate> {
  const scored: ScoredResponse[][] = prompts.map((_, i) =>
    (ids[i] ?? []).map((responseIds, k) => ({ ids: responseIds, reward: rewards[i]?.[k] as number, refLogp: null })),
  );

  // Find every response that will be chosen or rejected and still lacks its reference log-prob.
  const missing: ScoredResponse[] = [];
  const sequences: SequenceInput[] = [];
  prompts.forEach((prompt, i) => {
    const candidates = pairCandidates(scored[i] as ScoredResponse[], getEntry(pool, prompt.id).pair, settings.merge);
    const { best, worst } = argmaxArgmin(candidates.map((c) => c.reward));
    for (const index of new Set([best, worst])) {
      const candidate = candidates[index] as ScoredResponse;
      if (candidate.refLogp !== null) continue;
      missing.push(candidate);
      sequences.push({ prompt: prompt.ids, response: candidate.ids });
    }
  });
  const logps = await sequenceLogps(reference, sequences);
  missing.forEach((candidate, j) => {
    candidate.refLogp = logps[j] as number;
  });

  prompts.forEach((prompt, i) => {
    const entry = getEntry(pool, prompt.id);
    setPair(pool, prompt.id, buildPair(scored[i] as ScoredResponse[], entry.pair, settings));
  });
  return { referenceSequences: sequences.length };
}
