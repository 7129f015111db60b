import { describe, expect, it } from "vitest";
import { createPool, setPair, type Pool, type PromptPair } from "../src/loop/pool.js";
import { promptStatistic, selectionCount, selectPrompts } from "../src/loop/selection.js";
import { Rng } from "../src/util/random.js";

function pair(rewardChosen: number, rewardRejected = 0, allRewards: number[] = []): PromptPair {
  return {
    chosenIds: Int32Array.of(3, 2),
    rejectedIds: Int32Array.of(4, 2),
    rewardChosen,
    rewardRejected,
    refLogpChosen: -1,
    refLogpRejected: -2,
    iteration: 0,
    allRewards,
    trainable: rewardChosen > rewardRejected,
  };
}

/** A pool whose prompt ids are inserted out of order, with the given chosen rewards (null = no pair). */
function poolOf(rewards: ReadonlyMap<number, number | null>): Pool {
  const ids = [...rewards.keys()].reverse();
  const pool = createPool(ids);
  for (const [id, reward] of rewards) if (reward !== null) setPair(pool, id, pair(reward));
  return pool;
}

const rng = () => new Rng(7);

describe("selectionCount", () => {
  it("is floor(rho * n) with a minimum of 1", () => {
    expect(selectionCount(10, 0.5)).toBe(5);
    expect(selectionCount(10, 0.25)).toBe(2);
    expect(selectionCount(10, 0.05)).toBe(1);
    expect(selectionCount(7, 1)).toBe(7);
    expect(selectionCount(0, 0.5)).toBe(0);
  });

  it("absorbs float error in rho * n", () => {
    // 0.29 * 100 is 28.999999999999996 in binary floating point.
    expect(selectionCount(100, 0.29)).toBe(29);
  });

  it("rejects rho outside (0, 1]", () => {
    expect(() => selectionCount(10, 0)).toThrow(RangeError);
    expect(() => selectionCount(10, 1.5)).toThrow(RangeError);
    expect(() => selectionCount(10, Number.NaN)).toThrow(RangeError);
  });
});

describe("selectPrompts optune", () => {
  it("picks exactly the rho*N lowest chosen rewards", () => {
    const gen = new Rng(3);
    const rewards = new Map<number, number | null>();
    for (let id = 0; id < 40; id++) rewards.set(id * 3 + 1, gen.uniform());
    const pool = poolOf(rewards);
    const picked = selectPrompts(pool, { strategy: "optune", rho: 0.3, statistic: "chosen" }, rng());
    const expected = [...rewards.entries()]
      .sort((a, b) => (a[1] as number) - (b[1] as number))
      .slice(0, 12)
      .map(([id]) => id)
      .sort((a, b) => a - b);
    expect(picked).toEqual(expected);
  });

  it("breaks ties by ascending prompt id", () => {
    const rewards = new Map<number, number | null>([
      [9, 0.5],
      [4, 0.5],
      [7, 0.5],
      [2, 0.9],
      [5, 0.5],
      [1, 0.9],
    ]);
    const picked = selectPrompts(poolOf(rewards), { strategy: "optune", rho: 0.5, statistic: "chosen" }, rng());
    expect(picked).toEqual([4, 5, 7]);
  });

  it("puts prompts without a pair first, lowest ids first", () => {
    const rewards = new Map<number, number | null>([
      [0, 0.0],
      [1, null],
      [2, -5],
      [3, null],
      [4, null],
      [5, 0.1],
    ]);
    const pool = poolOf(rewards);
    expect(selectPrompts(pool, { strategy: "optune", rho: 0.5, statistic: "chosen" }, rng())).toEqual([1, 3, 4]);
    expect(selectPrompts(pool, { strategy: "optune", rho: 2 / 6, statistic: "chosen" }, rng())).toEqual([1, 3]);
    expect(selectPrompts(pool, { strategy: "optune", rho: 4 / 6, statistic: "chosen" }, rng())).toEqual([1, 2, 3, 4]);
  });

  it("ranks by the gap and mean statistics", () => {
    const pool = createPool([0, 1, 2]);
    setPair(pool, 0, pair(0.9, 0.1, [0.9, 0.8, 0.8, 0.1])); // gap 0.8, mean 0.65
    setPair(pool, 1, pair(0.6, 0.5, [0.6, 0.5, 0.5, 0.5])); // gap 0.1, mean 0.525
    setPair(pool, 2, pair(0.95, 0.05, [0.95, 0.05, 0.05, 0.05])); // gap 0.9, mean 0.275
    expect(selectPrompts(pool, { strategy: "optune", rho: 1 / 3, statistic: "chosen" }, rng())).toEqual([1]);
    expect(selectPrompts(pool, { strategy: "optune", rho: 1 / 3, statistic: "gap" }, rng())).toEqual([1]);
    expect(selectPrompts(pool, { strategy: "optune", rho: 1 / 3, statistic: "mean" }, rng())).toEqual([2]);
    expect(promptStatistic(pool.entries.get(0)!, "mean")).toBeCloseTo(0.65, 12);
  });

  it("standardizes by each prompt's own history for zscore", () => {
    const pool = createPool([0, 1, 2]);
    // Prompt 0 improved from its history; prompt 1 fell below its own mean; prompt 2 has one entry.
    for (const r of [0.1, 0.2, 0.9]) setPair(pool, 0, pair(r));
    for (const r of [0.9, 0.8, 0.7]) setPair(pool, 1, pair(r));
    setPair(pool, 2, pair(0.5));
    const z0 = promptStatistic(pool.entries.get(0)!, "zscore")!;
    const z1 = promptStatistic(pool.entries.get(1)!, "zscore")!;
    // History [0.9, 0.8, 0.7]: mean 0.8, population std sqrt(0.02/3); current 0.7.
    expect(z1).toBeCloseTo(-0.1 / Math.sqrt(0.02 / 3), 9);
    expect(z0).toBeGreaterThan(1);
    expect(promptStatistic(pool.entries.get(2)!, "zscore")).toBe(0);
    // The lowest raw chosen reward (prompt 2) is not the lowest zscore (prompt 1).
    expect(selectPrompts(pool, { strategy: "optune", rho: 1 / 3, statistic: "zscore" }, rng())).toEqual([1]);
  });

  it("gives zscore 0 when the history has no spread", () => {
    const pool = createPool([0]);
    setPair(pool, 0, pair(0.4));
    setPair(pool, 0, pair(0.4));
    expect(promptStatistic(pool.entries.get(0)!, "zscore")).toBe(0);
  });
});

describe("selectPrompts uniform and all", () => {
  it("all returns every prompt in ascending id order", () => {
    const pool = poolOf(new Map<number, number | null>([[5, 0.1], [2, null], [8, 0.7]]));
    expect(selectPrompts(pool, { strategy: "all", rho: 0.1, statistic: "chosen" }, rng())).toEqual([2, 5, 8]);
  });

  it("uniform draws distinct prompts with equal probability (chi-square)", () => {
    const n = 10;
    const rewards = new Map<number, number | null>();
    // Rewards that optune would always pick the same way, to show uniform ignores them.
    for (let id = 0; id < n; id++) rewards.set(id, id / n);
    const pool = poolOf(rewards);
    const gen = new Rng(2024);
    const counts = new Array<number>(n).fill(0);
    const draws = 5000;
    for (let d = 0; d < draws; d++) {
      const picked = selectPrompts(pool, { strategy: "uniform", rho: 0.3, statistic: "chosen" }, gen);
      expect(picked.length).toBe(3);
      expect(new Set(picked).size).toBe(3);
      for (const id of picked) counts[id] = (counts[id] as number) + 1;
    }
    const expected = (draws * 3) / n;
    const chiSquare = counts.reduce((sum, c) => sum + ((c - expected) ** 2) / expected, 0);
    // 99.9th percentile of chi-square with 9 degrees of freedom.
    expect(chiSquare).toBeLessThan(27.88);
  });

  it("uniform is reproducible from the seed", () => {
    const pool = createPool([...Array(50).keys()]);
    const options = { strategy: "uniform", rho: 0.2, statistic: "chosen" } as const;
    const a = selectPrompts(pool, options, new Rng(11));
    expect(selectPrompts(pool, options, new Rng(11))).toEqual(a);
    expect(selectPrompts(pool, options, new Rng(12))).not.toEqual(a);
  });
});
