// Where rewards come from. The loop only sees this interface: a batched, async scorer of (prompt, response)
// pairs. Sources get both the text and the token ids so that a text-only scorer (an HTTP endpoint, a JS
// function) and an id-based one (a reward model sharing the policy's tokenizer) fit the same slot, and a
// weighted sum of sources is itself a source.

export interface RewardPrompt {
  text: string;
  /** Token ids as the policy sees the prompt. */
  ids: Int32Array;
}

export interface RewardResponse {
  /** Decoded response text, without the end-of-sequence token. */
  text: string;
  /** Generated token ids, including the end-of-sequence token when there is one. */
  ids: Int32Array;
  /** False when generation hit the length limit before emitting end-of-sequence. */
  endedWithEos: boolean;
}

/** prompts[i] and responses[i] form one item; a prompt object may be repeated for its K responses. */
export interface RewardBatch {
  prompts: readonly RewardPrompt[];
  responses: readonly RewardResponse[];
}

export interface RewardSource {
  /** Short description for logs, e.g. "reward model (.optune/cache/...)". */
  readonly name: string;
  /** One finite reward per item, in batch order. */
  score(batch: RewardBatch): Promise<number[]>;
  /** Frees native resources, if any. */
  dispose?(): Promise<void>;
  /** Throws when the source cannot score chat prompts (checked before a run whose prompts are chats starts). */
  checkChatPrompts?(): void;
}

/** Throws unless `batch` has as many prompts as responses. */
export function checkRewardBatch(batch: RewardBatch): void {
  if (batch.prompts.length !== batch.responses.length) {
    throw new RangeError(`reward batch has ${batch.prompts.length} prompts but ${batch.responses.length} responses`);
  }
}

/** Scores a batch and checks that the source kept its side of the contract. */
export async function scoreChecked(source: RewardSource, batch: RewardBatch): Promise<number[]> {
  checkRewardBatch(batch);
  const rewards = await source.score(batch);
  if (rewards.length !== batch.responses.length) {
    throw new Error(`reward source '${source.name}' returned ${rewards.length} rewards for ${batch.responses.length} responses`);
  }
  rewards.forEach((r, i) => {
    if (!Number.isFinite(r)) throw new Error(`reward source '${source.name}' returned ${r} for item ${i}`);
  });
  return rewards;
}
