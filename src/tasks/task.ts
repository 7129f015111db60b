// What the online loop needs from a task: prompts (train pool and held-out eval), how to read a generated
// response, where the starting policy lives, the reward it optimizes, and the reward it is judged by.

import type { RewardSource } from "../rewards/source.js";

export interface TaskPrompt {
  /** Unique within its split; also the prompt's random stream id when sampling. */
  id: number;
  text: string;
  /** The policy's input ids for this prompt. */
  ids: Int32Array;
}

export interface DecodedText {
  /** Text before the end-of-sequence token. */
  text: string;
  endedWithEos: boolean;
}

export interface Task {
  readonly name: string;
  readonly trainPrompts: readonly TaskPrompt[];
  readonly evalPrompts: readonly TaskPrompt[];
  /** Generation of a response ends after one of these tokens. */
  readonly stopTokens: readonly number[];
  /** Checkpoint directory of the starting policy. */
  readonly policyDir: string;
  /** Checkpoint directory of the reference model; the starting policy when absent. */
  readonly referenceDir?: string;
  /**
   * The vocabulary size the task's prompts and decoding assume, when the models must match it exactly (the built-in
   * task's own character tokenizer); checked when the loop loads the policy and reference.
   */
  readonly vocabSize?: number;
  /**
   * Sampling draws only token ids below this: the tokenizer's size when the model's vocabulary is padded past it
   * (Qwen2 models: 151936 rows for 151665 tokens), since those rows have no text. Absent: every id.
   */
  readonly vocabLimit?: number;
  decode(responseIds: Int32Array): DecodedText;
  /** The reward the loop optimizes (for the built-in task: a learned reward model, i.e. a proxy). */
  createRewardSource(): Promise<RewardSource>;
  /** The reward evaluation reports (for the built-in task: the hidden gold reward). */
  createEvalSource(): Promise<RewardSource>;
  /**
   * Writes what a saved checkpoint of the policy needs besides the weights and config.json (for a user task: its
   * tokenizer files), so the checkpoint is a complete model directory. Absent when nothing is needed.
   */
  writeCheckpointExtras?(dir: string): void;
}
