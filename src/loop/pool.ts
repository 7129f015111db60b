// The prompt pool: per training prompt, the preference pair it currently
// contributes to DPO training, plus the history used by the zscore statistic.
//
// OPTune keeps a prompt's pair across iterations until the selection step
// decides to regenerate it, so the pool is the loop's main state.

export interface PromptPair {
  /** Response token ids (without the prompt), ending with <eos> when it was generated. */
  chosenIds: Int32Array;
  rejectedIds: Int32Array;
  rewardChosen: number;
  rewardRejected: number;
  /** Sequence log-probabilities under the reference model, cached for DPO. */
  refLogpChosen: number;
  refLogpRejected: number;
  /** Loop iteration that built this pair. */
  iteration: number;
  /** Rewards of all responses the pair was chosen from. */
  allRewards: number[];
  /** False when the reward gap is below the tie threshold: kept, but not trained on. */
  trainable: boolean;
}

export interface PoolEntry {
  readonly promptId: number;
  pair: PromptPair | null;
  /** rewardChosen of every pair this prompt has had, oldest first (for zscore). */
  history: number[];
}

export interface Pool {
  /** Entries keyed by prompt id. */
  readonly entries: Map<number, PoolEntry>;
}

/** An empty pool: every prompt without a pair yet. */
export function createPool(promptIds: readonly number[]): Pool {
  const entries = new Map<number, PoolEntry>();
  for (const promptId of promptIds) {
    if (!Number.isInteger(promptId)) throw new RangeError(`prompt id must be an integer, got ${promptId}`);
    if (entries.has(promptId)) throw new RangeError(`duplicate prompt id ${promptId}`);
    entries.set(promptId, { promptId, pair: null, history: [] });
  }
  return { entries };
}

export function getEntry(pool: Pool, promptId: number): PoolEntry {
  const entry = pool.entries.get(promptId);
  if (entry === undefined) throw new RangeError(`prompt id ${promptId} is not in the pool`);
  return entry;
}

/** Replaces a prompt's pair and records its chosen reward in the history. */
export function setPair(pool: Pool, promptId: number, pair: PromptPair): void {
  const entry = getEntry(pool, promptId);
  entry.pair = pair;
  entry.history.push(pair.rewardChosen);
}

/** Entries in ascending prompt-id order, so iteration order never depends on insertion. */
export function sortedEntries(pool: Pool): PoolEntry[] {
  return [...pool.entries.values()].sort((a, b) => a.promptId - b.promptId);
}

export interface TrainablePair {
  promptId: number;
  pair: PromptPair;
}

/** The pairs DPO trains on this iteration, in ascending prompt-id order. */
export function trainablePairs(pool: Pool): TrainablePair[] {
  const out: TrainablePair[] = [];
  for (const entry of sortedEntries(pool)) {
    if (entry.pair !== null && entry.pair.trainable) out.push({ promptId: entry.promptId, pair: entry.pair });
  }
  return out;
}
