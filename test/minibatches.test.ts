import { describe, expect, it } from "vitest";
import { makeMinibatches, pairMinibatches } from "../src/loop/minibatches.js";
import { createPool, setPair, type PromptPair } from "../src/loop/pool.js";
import { Rng } from "../src/util/random.js";

function pair(trainable: boolean): PromptPair {
  return {
    chosenIds: Int32Array.of(5, 2),
    rejectedIds: Int32Array.of(6, 2),
    rewardChosen: trainable ? 0.9 : 0.5,
    rewardRejected: 0.5,
    refLogpChosen: -1,
    refLogpRejected: -1,
    iteration: 0,
    allRewards: [],
    trainable,
  };
}

describe("makeMinibatches", () => {
  it("covers every item once per epoch, with a smaller last batch", () => {
    const items = [...Array(10).keys()];
    const batches = makeMinibatches(items, { batchSize: 4, epochs: 3 }, new Rng(1));
    expect(batches.map((b) => b.length)).toEqual([4, 4, 2, 4, 4, 2, 4, 4, 2]);
    for (let epoch = 0; epoch < 3; epoch++) {
      const seen = batches.slice(epoch * 3, epoch * 3 + 3).flat();
      expect([...seen].sort((a, b) => a - b)).toEqual(items);
    }
    // Epochs are shuffled independently.
    expect(batches.slice(0, 3).flat()).not.toEqual(batches.slice(3, 6).flat());
  });

  it("is reproducible from the seed and rejects bad sizes", () => {
    const items = [...Array(30).keys()];
    const a = makeMinibatches(items, { batchSize: 8, epochs: 2 }, new Rng(5));
    expect(makeMinibatches(items, { batchSize: 8, epochs: 2 }, new Rng(5))).toEqual(a);
    expect(makeMinibatches(items, { batchSize: 8, epochs: 2 }, new Rng(6))).not.toEqual(a);
    expect(makeMinibatches([], { batchSize: 8, epochs: 2 }, new Rng(5))).toEqual([]);
    expect(() => makeMinibatches(items, { batchSize: 0, epochs: 1 }, new Rng(5))).toThrow(RangeError);
  });
});

describe("pairMinibatches", () => {
  it("uses only trainable pairs", () => {
    const pool = createPool([0, 1, 2, 3, 4]);
    setPair(pool, 0, pair(true));
    setPair(pool, 1, pair(false));
    setPair(pool, 3, pair(true));
    setPair(pool, 4, pair(true));
    const batches = pairMinibatches(pool, { batchSize: 2, epochs: 1 }, new Rng(2));
    expect(batches.flat().map((p) => p.promptId).sort()).toEqual([0, 3, 4]);
  });
});
