import { describe, expect, it } from "vitest";
import { Rng } from "../src/util/random.js";

const draw = (rng: Rng, n: number) => Array.from({ length: n }, () => rng.nextUint32());

describe("Rng", () => {
  it("is reproducible and seed-sensitive", () => {
    expect(draw(new Rng(42), 8)).toEqual(draw(new Rng(42), 8));
    expect(draw(new Rng(42), 8)).not.toEqual(draw(new Rng(43), 8));
    // Seeds that differ only above 2^32 still differ.
    expect(draw(new Rng(5), 8)).not.toEqual(draw(new Rng(5 + 2 ** 32), 8));
    expect(() => new Rng(0.5)).toThrow(RangeError);
  });

  it("forks independent streams that do not depend on draws from the parent", () => {
    const parent = new Rng(9);
    const a = draw(parent.fork(1), 4);
    parent.nextUint32();
    expect(draw(parent.fork(1), 4)).toEqual(a);
    expect(draw(parent.fork(2), 4)).not.toEqual(a);
    expect(draw(new Rng(10).fork(1), 4)).not.toEqual(a);
  });

  it("draws uniform doubles in [0, 1) with mean 1/2", () => {
    const rng = new Rng(1);
    let sum = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < 20000; i++) {
      const u = rng.uniform();
      min = Math.min(min, u);
      max = Math.max(max, u);
      sum += u;
    }
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
    // Standard error of the mean is 0.002.
    expect(Math.abs(sum / 20000 - 0.5)).toBeLessThan(0.01);
  });

  it("draws integers over the whole inclusive range without bias (chi-square)", () => {
    const rng = new Rng(2);
    const counts = new Array<number>(7).fill(0);
    for (let i = 0; i < 14000; i++) {
      const v = rng.int(-3, 3);
      counts[v + 3] = (counts[v + 3] as number) + 1;
    }
    const chiSquare = counts.reduce((s, c) => s + (c - 2000) ** 2 / 2000, 0);
    // 99.9th percentile of chi-square with 6 degrees of freedom.
    expect(chiSquare).toBeLessThan(22.46);
    expect(rng.int(4, 4)).toBe(4);
    expect(() => rng.int(3, 2)).toThrow(RangeError);
  });

  it("shuffles into a permutation and samples distinct items", () => {
    const rng = new Rng(3);
    const items = [...Array(20).keys()];
    const shuffled = rng.shuffle(items.slice());
    expect(shuffled).not.toEqual(items);
    expect([...shuffled].sort((a, b) => a - b)).toEqual(items);
    const sample = rng.sample(items, 5);
    expect(new Set(sample).size).toBe(5);
    expect(() => rng.sample(items, 21)).toThrow(RangeError);
    expect(() => rng.choice([])).toThrow(RangeError);
  });
});
