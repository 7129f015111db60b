// A reward source backed by the task's own reward function (for the built-in task: the gold reward).
// Useful to optimize the true objective directly, and as the scorer the evaluation uses.

import { checkRewardBatch, type RewardBatch, type RewardPrompt, type RewardResponse, type RewardSource } from "./source.js";

export type RewardFunction = (prompt: RewardPrompt, response: RewardResponse) => number;

export class TaskRewardSource implements RewardSource {
  constructor(
    readonly name: string,
    private readonly reward: RewardFunction,
  ) {}

  async score(batch: RewardBatch): Promise<number[]> {
    checkRewardBatch(batch);
    return batch.responses.map((response, i) => this.reward(batch.prompts[i] as RewardPrompt, response));
  }
}
