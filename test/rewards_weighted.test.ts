// The weighted sum of reward sources and the missing-EOS penalty.

import { describe, expect, it } from "vitest";

import { WeightedRewardSource } from "../src/rewards/weighted.js";
import type { RewardBatch, RewardSource } from "../src/rewards/source.js";

function fixed(name: string, rewards: number[]): RewardSource & { disposed: boolean } {
  return {
    name,
    disposed: false,
    score: async () => rewards,
    async dispose() {
      this.disposed = true;
    },
  };
}

const batch: RewardBatch = {
  prompts: [0, 1, 2].map(() => ({ text: "p", ids: Int32Array.from([1]) })),
  responses: [true, false, true].map((endedWithEos) => ({ text: "r", ids: Int32Array.from([2]), endedWithEos })),
};

describe("weighted reward", () => {
  it("sums weighted sources and keeps each source's rewards", async () => {
    const source = new WeightedRewardSource([
      { source: fixed("a", [1, 2, 3]), weight: 0.5 },
      { source: fixed("b", [10, -10, 0]), weight: -2 },
    ]);
    expect(await source.score(batch)).toEqual([0.5 - 20, 1 + 20, 1.5]);
    expect(source.lastComponents).toEqual([[1, 2, 3], [10, -10, 0]]);
    expect(source.name).toBe("0.5 * a + -2 * b");
  });

  it("subtracts the missing-EOS penalty from responses that hit the length limit", async () => {
    const source = new WeightedRewardSource([{ source: fixed("a", [1, 2, 3]), weight: 1 }], { missingEosPenalty: 5 });
    expect(await source.score(batch)).toEqual([1, -3, 3]);
    expect(source.name).toBe("1 * a - 5 * missing EOS");
  });

  it("names the component that broke its contract", async () => {
    const short = new WeightedRewardSource([
      { source: fixed("good", [1, 2, 3]), weight: 1 },
      { source: fixed("short", [1]), weight: 1 },
    ]);
    await expect(short.score(batch)).rejects.toThrow(/'short' returned 1 rewards for 3 responses/);
    const nan = new WeightedRewardSource([{ source: fixed("nan", [1, NaN, 3]), weight: 1 }]);
    await expect(nan.score(batch)).rejects.toThrow(/'nan' returned NaN for item 1/);
    const failing: RewardSource = { name: "down", score: () => Promise.reject(new Error("endpoint down")) };
    await expect(new WeightedRewardSource([{ source: failing, weight: 1 }]).score(batch)).rejects.toThrow("endpoint down");
  });

  it("rejects bad weights and penalties, and disposes every source", async () => {
    expect(() => new WeightedRewardSource([])).toThrow(/at least one source/);
    expect(() => new WeightedRewardSource([{ source: fixed("a", []), weight: NaN }])).toThrow(/component 0 \(a\) has weight NaN/);
    expect(() => new WeightedRewardSource([{ source: fixed("a", []), weight: 1 }], { missingEosPenalty: -1 })).toThrow(
      /missingEosPenalty must be a finite number >= 0, got -1/,
    );
    const a = fixed("a", []);
    const b = fixed("b", []);
    await new WeightedRewardSource([{ source: a, weight: 1 }, { source: b, weight: 1 }]).dispose();
    expect(a.disposed && b.disposed).toBe(true);
  });
});
