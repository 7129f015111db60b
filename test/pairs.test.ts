import { describe, expect, it } from "vitest";
import { argmaxArgmin, buildPair, type ScoredResponse } from "../src/loop/pairs.js";
import type { PromptPair } from "../src/loop/pool.js";

function responses(rewards: readonly number[]): ScoredResponse[] {
  return rewards.map((reward, i) => ({ ids: Int32Array.of(10 + i, 2), reward, refLogp: -(i + 1) }));
}

const options = { iteration: 3, tieThreshold: 0, merge: false };

describe("argmaxArgmin", () => {
  it("returns the first max and first min", () => {
    expect(argmaxArgmin([0.2, 0.9, 0.1, 0.5])).toEqual({ best: 1, worst: 2 });
    expect(argmaxArgmin([0.5, 0.9, 0.9, 0.1, 0.1])).toEqual({ best: 1, worst: 3 });
    expect(argmaxArgmin([0.3])).toEqual({ best: 0, worst: 0 });
  });
});

describe("buildPair", () => {
  it("takes the argmax as chosen and the argmin as rejected", () => {
    const p = buildPair(responses([0.2, 0.9, 0.1, 0.5]), null, options);
    expect(Array.from(p.chosenIds)).toEqual([11, 2]);
    expect(Array.from(p.rejectedIds)).toEqual([12, 2]);
    expect(p.rewardChosen).toBe(0.9);
    expect(p.rewardRejected).toBe(0.1);
    expect(p.refLogpChosen).toBe(-2);
    expect(p.refLogpRejected).toBe(-3);
    expect(p.iteration).toBe(3);
    expect(p.allRewards).toEqual([0.2, 0.9, 0.1, 0.5]);
    expect(p.trainable).toBe(true);
  });

  it("breaks reward ties by the lowest index", () => {
    const p = buildPair(responses([0.5, 0.9, 0.9, 0.1, 0.1]), null, options);
    expect(Array.from(p.chosenIds)).toEqual([11, 2]);
    expect(Array.from(p.rejectedIds)).toEqual([13, 2]);
  });

  it("marks a pair of equal rewards untrainable even with threshold 0", () => {
    const p = buildPair(responses([0.4, 0.4, 0.4]), null, options);
    expect(Array.from(p.chosenIds)).toEqual([10, 2]);
    expect(Array.from(p.rejectedIds)).toEqual([10, 2]);
    expect(p.trainable).toBe(false);
  });

  it("applies the tie threshold to the reward gap", () => {
    // Gap 0.25, exactly representable.
    expect(buildPair(responses([0.5, 0.75]), null, { ...options, tieThreshold: 0.25 }).trainable).toBe(true);
    expect(buildPair(responses([0.5, 0.75]), null, { ...options, tieThreshold: 0.3 }).trainable).toBe(false);
  });

  describe("merge", () => {
    const previous: PromptPair = {
      chosenIds: Int32Array.of(90, 2),
      rejectedIds: Int32Array.of(91, 2),
      rewardChosen: 0.95,
      rewardRejected: 0.05,
      refLogpChosen: -7,
      refLogpRejected: -8,
      iteration: 1,
      allRewards: [0.95, 0.05],
      trainable: true,
    };

    it("keeps better old responses against the new ones", () => {
      const p = buildPair(responses([0.5, 0.6]), previous, { ...options, merge: true });
      expect(Array.from(p.chosenIds)).toEqual([90, 2]);
      expect(Array.from(p.rejectedIds)).toEqual([91, 2]);
      expect(p.refLogpChosen).toBe(-7);
      expect(p.iteration).toBe(3);
      expect(p.allRewards).toEqual([0.95, 0.05, 0.5, 0.6]);
    });

    it("mixes old and new: best new chosen, old rejected", () => {
      const p = buildPair(responses([0.5, 0.99]), previous, { ...options, merge: true });
      expect(Array.from(p.chosenIds)).toEqual([11, 2]);
      expect(Array.from(p.rejectedIds)).toEqual([91, 2]);
    });

    it("keeps the old response on equal reward", () => {
      const p = buildPair(responses([0.95, 0.05]), previous, { ...options, merge: true });
      expect(Array.from(p.chosenIds)).toEqual([90, 2]);
      expect(Array.from(p.rejectedIds)).toEqual([91, 2]);
    });

    it("ignores the previous pair without merge, or when there is none", () => {
      expect(Array.from(buildPair(responses([0.5, 0.6]), previous, options).chosenIds)).toEqual([11, 2]);
      const fresh = buildPair(responses([0.5, 0.6]), null, { ...options, merge: true });
      expect(fresh.allRewards).toEqual([0.5, 0.6]);
    });
  });

  it("rejects empty or non-finite input", () => {
    expect(() => buildPair([], null, options)).toThrow(RangeError);
    expect(() => buildPair(responses([0.1, Number.NaN]), null, options)).toThrow(/non-finite/);
    expect(() => buildPair(responses([0.1]), null, { ...options, tieThreshold: -1 })).toThrow(RangeError);
  });
});
