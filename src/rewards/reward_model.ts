// A learned reward model on the native engine: an EngineModel built with rewardModel: true, whose score of
// <prompt><response> (read at the last token) is the reward.

import { type DeviceOptions, EngineModel, packBatch, type SequenceInput } from "../engine/index.js";
import { checkRewardBatch, type RewardBatch, type RewardPrompt, type RewardResponse, type RewardSource } from "./source.js";

/** Turns one item into the reward model's token ids; the default reuses the policy's ids as they are. */
/** Scores of `sequences` from a reward model, `chunkSize` sequences per engine call (bounds activation memory). */
export async function scoreInChunks(model: EngineModel, sequences: readonly SequenceInput[], chunkSize: number): Promise<number[]> {
  const rewards: number[] = [];
  for (let start = 0; start < sequences.length; start += chunkSize) {
    const scores = await model.scores(packBatch(sequences.slice(start, start + chunkSize)));
    for (const s of scores) rewards.push(s);
  }
  return rewards;
}

export type RewardModelEncoder = (prompt: RewardPrompt, response: RewardResponse) => SequenceInput;

export interface RewardModelSourceOptions {
  /** Sequences per engine call; bounds the activation memory of one call. */
  chunkSize?: number;
  /** Needed when the reward model's tokenizer differs from the policy's. */
  encode?: RewardModelEncoder;
  /** Where the reward model runs (with the policy: one device, one memory plan); the CPU when absent. */
  placement?: DeviceOptions;
}

const DEFAULT_CHUNK = 512;

const sameIds: RewardModelEncoder = (prompt, response) => ({ prompt: prompt.ids, response: response.ids });

export class RewardModelSource implements RewardSource {
  readonly name: string;
  private readonly chunkSize: number;
  private readonly encode: RewardModelEncoder;

  constructor(
    private readonly model: EngineModel,
    name: string,
    options: RewardModelSourceOptions = {},
  ) {
    if (!model.config.rewardModel) throw new Error(`reward model '${name}' was not built with rewardModel: true`);
    this.name = name;
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    this.encode = options.encode ?? sameIds;
  }

  /** Loads a reward-model checkpoint directory (config.json + model.safetensors). */
  static async load(dir: string, options: RewardModelSourceOptions = {}): Promise<RewardModelSource> {
    return new RewardModelSource(await EngineModel.load(dir, options.placement), `reward model ${dir}`, options);
  }

  async score(batch: RewardBatch): Promise<number[]> {
    checkRewardBatch(batch);
    const sequences = batch.responses.map((response, i) => this.encode(batch.prompts[i] as RewardPrompt, response));
    return scoreInChunks(this.model, sequences, this.chunkSize);
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}
