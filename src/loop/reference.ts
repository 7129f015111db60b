// Reference-model log-probs of responses. The loop computes them once per response that enters the pool and
// caches them in the pair, so DPO steps never run the reference model; only refreshing the reference (a new
// model) recomputes the cache, once per pooled response.

import { packBatch, type EngineModel, type SequenceInput } from "../engine/index.js";
import { sortedEntries, type Pool } from "./pool.js";

// Sequences per engine call: bounds activation memory without many small calls.
const CHUNK = 512;

/** Sum of response-token log-probs of each sequence under `model`. */
export async function sequenceLogps(model: EngineModel, sequences: readonly SequenceInput[]): Promise<number[]> {
  const out: number[] = [];
  for (let start = 0; start < sequences.length; start += CHUNK) {
    const result = await model.logprobs(packBatch(sequences.slice(start, start + CHUNK)));
    for (const v of result.seqLogps) out.push(v);
  }
  return out;
}

/**
 * Replaces every cached reference log-prob in the pool by its value under `reference` (after the reference
 * model changed). Returns the number of sequences scored.
 */
export async function recomputePoolReference(
  pool: Pool,
  reference: EngineModel,
  promptIds: ReadonlyMap<number, Int32Array>,
): Promise<number> {
  const entries = sortedEntries(pool).filter((e) => e.pair !== null);
  const sequences: SequenceInput[] = [];
  for (const entry of entries) {
    const prompt = promptIds.get(entry.promptId);
    if (prompt === undefined) throw new Error(`no prompt ids for pool prompt ${entry.promptId}`);
    const pair = entry.pair!;
    sequences.push({ prompt, response: pair.chosenIds }, { prompt, response: pair.rejectedIds });
  }
  const logps = await sequenceLogps(reference, sequences);
  entries.forEach((entry, j) => {
    const pair = entry.pair!;
    pair.refLogpChosen = logps[2 * j] as number;
    pair.refLogpRejected = logps[2 * j + 1] as number;
  });
  return sequences.length;
}
