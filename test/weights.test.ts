import { describe, expect, it } from "vitest";
import { pairWeights, stableSigmoid } from "../src/loop/weights.js";

const mean = (w: Float64Array) => w.reduce((s, v) => s + v, 0) / w.length;

describe("pairWeights", () => {
  it("none is plain DPO", () => {
    expect(Array.from(pairWeights([0, 0.3, 5], "none", 2))).toEqual([1, 1, 1]);
  });

  it("linear normalizes gaps to mean 1", () => {
    const w = pairWeights([1, 2, 3], "linear", 2);
    expect(w[0]).toBeCloseTo(0.5, 12);
    expect(w[1]).toBeCloseTo(1, 12);
    expect(w[2]).toBeCloseTo(1.5, 12);
    expect(mean(pairWeights([0.1, 0.7, 0.05, 0.3], "linear", 1))).toBeCloseTo(1, 12);
  });

  it("linear gives all 1 when every gap is 0 or beta2 is 0", () => {
    expect(Array.from(pairWeights([0, 0, 0], "linear", 1))).toEqual([1, 1, 1]);
    expect(Array.from(pairWeights([0.2, 0.4], "linear", 0))).toEqual([1, 1]);
  });

  it("exp is batch size times the softmax of beta2 * gap", () => {
    // softmax([0, ln 2]) = [1/3, 2/3]; times 2 pairs.
    const w = pairWeights([0, Math.LN2 / 2], "exp", 2);
    expect(w[0]).toBeCloseTo(2 / 3, 12);
    expect(w[1]).toBeCloseTo(4 / 3, 12);
    expect(Array.from(pairWeights([0.4, 0.4, 0.4], "exp", 3)).map((v) => Number(v.toFixed(12)))).toEqual([1, 1, 1]);
    expect(mean(pairWeights([0.1, 0.7, 0.05], "exp", 5))).toBeCloseTo(1, 12);
  });

  it("sigmoid is sigmoid(beta2 * gap)", () => {
    const w = pairWeights([0, 1, 0.25], "sigmoid", 2);
    expect(w[0]).toBe(0.5);
    expect(w[1]).toBeCloseTo(1 / (1 + Math.exp(-2)), 14);
    expect(w[2]).toBeCloseTo(1 / (1 + Math.exp(-0.5)), 14);
  });

  it("stays finite with huge gaps and beta2", () => {
    const gaps = [1e308, 1e308, 0];
    for (const fn of ["none", "linear", "exp", "sigmoid"] as const) {
      for (const w of pairWeights(gaps, fn, 1000)) expect(Number.isFinite(w)).toBe(true);
    }
    expect(Array.from(pairWeights(gaps, "linear", 1000))).toEqual([1.5, 1.5, 0]);
    expect(Array.from(pairWeights(gaps, "exp", 1000))).toEqual([1.5, 1.5, 0]);
    expect(Array.from(pairWeights(gaps, "sigmoid", 1000))).toEqual([1, 1, 0.5]);
    // A large but finite beta2 * gap difference underflows to weight 0, not NaN.
    expect(Array.from(pairWeights([800, 0], "exp", 1))).toEqual([2, 0]);
  });

  it("handles an empty batch", () => {
    expect(pairWeights([], "linear", 1).length).toBe(0);
    expect(pairWeights([], "exp", 1).length).toBe(0);
  });

  it("rejects negative or non-finite gaps and bad beta2", () => {
    expect(() => pairWeights([0.1, -0.2], "linear", 1)).toThrow(RangeError);
    expect(() => pairWeights([Number.NaN], "exp", 1)).toThrow(RangeError);
    expect(() => pairWeights([0.1], "sigmoid", -1)).toThrow(RangeError);
  });
});

describe("stableSigmoid", () => {
  it("does not overflow at the extremes", () => {
    expect(stableSigmoid(-1000)).toBe(0);
    expect(stableSigmoid(1000)).toBe(1);
    expect(stableSigmoid(-2)).toBeCloseTo(1 / (1 + Math.exp(2)), 15);
  });
});
