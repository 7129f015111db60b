// The OPTune-vs-baselines bench: aggregation and time to target on synthetic metrics (answers computed by hand
// in the comments), and a tiny end-to-end bench on a tiny built-in task checking every output.

import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { aggregateBench, armCurve, median, spread, timeToTarget, type ArmRuns } from "../src/bench/aggregate.js";
import { BASELINE_ARM, runBench, type BenchResult } from "../src/bench/arms.js";
import type { IterationMetrics } from "../src/loop/metrics.js";
import { TINY_TASK } from "./tiny_task.js";

const scratch = mkdtempSync(join(tmpdir(), "optune-bench-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

interface Step {
  gold: number;
  generation?: number;
  scoring?: number;
  training?: number;
  tokens?: number;
}

/** A run's records: step t is iteration t; each iteration also spends 1 s evaluating (not arm time). */
function run(steps: readonly Step[]): IterationMetrics[] {
  return steps.map((s, iteration) => {
    const generation = s.generation ?? 0;
    const scoring = s.scoring ?? 0;
    const training = s.training ?? 0;
    return {
      iteration,
      proxy: { chosen: null, rejected: null, mean: null, evalSampled: s.gold / 2 },
      gold: { greedy: s.gold + 0.1, greedySe: 0, sampled: s.gold, sampledSe: 0 },
      winRate: { greedy: 0.5, sampled: 0.5 },
      kl: 0,
      train: { loss: null, accuracy: null, margin: null, chosenReward: null, rejectedReward: null, steps: 0, pairs: 0 },
      weights: null,
      generation: { promptsRegenerated: iteration === 0 ? 0 : 10, tokensGenerated: s.tokens ?? 0, referenceSequences: 0, trainablePairs: 0 },
      seconds: { generation, scoring, training, evaluation: 1, total: generation + scoring + training + 1 },
    };
  });
}

// all+dpo: seed 1 spends 4 s per iteration (2 gen, 1 score, 1 train), seed 2 spends 6 s (3, 2, 1).
//   cumulative seconds: seed 1 0, 4, 8; seed 2 0, 6, 12 -> mean T = 0, 5, 10
//   gold: seed 1 .50 .60 .70; seed 2 .50 .62 .74 -> mean G = .50, .61, .72; target = .72, reached at T = 10.
const baseline: ArmRuns = {
  id: BASELINE_ARM,
  runs: [
    { seed: 1, metrics: run([{ gold: 0.5 }, { gold: 0.6, generation: 2, scoring: 1, training: 1, tokens: 100 }, { gold: 0.7, generation: 2, scoring: 1, training: 1, tokens: 100 }]) },
    { seed: 2, metrics: run([{ gold: 0.5 }, { gold: 0.62, generation: 3, scoring: 2, training: 1, tokens: 120 }, { gold: 0.74, generation: 3, scoring: 2, training: 1, tokens: 120 }]) },
  ],
};
// optune+dpo: 2 s per iteration on both seeds -> T = 0, 2, 4; gold .50 .70 .80 and .50 .66 .76 -> G = .50, .68, .78.
//   target .72 is crossed in iteration 2: 2 + (.72 - .68) / (.78 - .68) * 2 = 2.8 s; speedup 10 / 2.8.
const optune: ArmRuns = {
  id: "optune+dpo",
  runs: [
    { seed: 1, metrics: run([{ gold: 0.5 }, { gold: 0.7, generation: 1, training: 1, tokens: 50 }, { gold: 0.8, generation: 1, training: 1, tokens: 50 }]) },
    { seed: 2, metrics: run([{ gold: 0.5 }, { gold: 0.66, generation: 1, training: 1, tokens: 60 }, { gold: 0.76, generation: 1, training: 1, tokens: 60 }]) },
  ],
};
// uniform+dpo never gets above .60 < .72.
const uniform: ArmRuns = {
  id: "uniform+dpo",
  runs: [1, 2].map((seed) => ({ seed, metrics: run([{ gold: 0.5 }, { gold: 0.55, training: 1 }, { gold: 0.6, training: 1 }]) })),
};
// An ablation on seed 2 only, compared with the baseline's seed 2: target .74, reached by the baseline at 12 s.
//   3 s per iteration; gold .50 .60 .80 -> 3 + (.74 - .60) / (.80 - .60) * 3 = 5.1 s; speedup 12 / 5.1.
const ablation: ArmRuns = {
  id: "optune+wdpo statistic=gap",
  runs: [{ seed: 2, metrics: run([{ gold: 0.5 }, { gold: 0.6, training: 3 }, { gold: 0.8, training: 3 }]) }],
};

describe("bench aggregation", () => {
  it("spread: mean, sample std (n - 1), min, max; no std for one value", () => {
    const s = spread([1, 2, 3, 6]);
    expect(s.mean).toBe(3);
    // squared deviations 4 + 1 + 0 + 9 = 14, / 3
    expect(s.std).toBeCloseTo(Math.sqrt(14 / 3), 12);
    expect([s.min, s.max]).toEqual([1, 6]);
    expect(spread([0.4]).std).toBeNull();
  });

  it("curves: cumulative wall-clock without evaluation, seed means of gold and tokens", () => {
    const curve = armCurve(baseline, "sampled");
    expect(curve.map((p) => p.seconds.mean)).toEqual([0, 5, 10]);
    expect(curve[2]?.seconds.min).toBe(8);
    expect(curve[2]?.seconds.max).toBe(12);
    expect(curve.map((p) => p.gold.mean)).toEqual([0.5, expect.closeTo(0.61, 12), expect.closeTo(0.72, 12)]);
    expect(curve.map((p) => p.tokens.mean)).toEqual([0, 110, 220]);
    expect(armCurve(baseline, "greedy")[2]?.gold.mean).toBeCloseTo(0.82, 12);
  });

  it("time to target: interpolated in time, 0 when the start reaches it, null when never", () => {
    const curve = armCurve(optune, "sampled");
    const reached = timeToTarget(curve, 0.72);
    expect(reached.iteration).toBe(2);
    expect(reached.seconds).toBeCloseTo(2.8, 12);
    // (.60 - .50) / (.68 - .50) of the 2 s of iteration 1
    expect(timeToTarget(curve, 0.6)).toEqual({ seconds: expect.closeTo((2 * 0.1) / 0.18, 12), iteration: 1 });
    expect(timeToTarget(curve, 0.5)).toEqual({ seconds: 0, iteration: 0 });
    expect(timeToTarget(curve, 0.81)).toEqual({ seconds: null, iteration: null });
  });

  it("target, speedup, final gold and totals against the baseline; ablations on their own seeds", () => {
    const result = aggregateBench([baseline, optune, uniform, ablation], BASELINE_ARM, "sampled");
    expect(result.target).toBeCloseTo(0.72, 12);
    expect(result.start).toBe(0.5);
    const [base, opt, uni, abl] = result.arms;
    expect(base?.timeToTarget.seconds).toBeCloseTo(10, 12);
    expect(base?.speedup).toBeCloseTo(1, 12);
    expect(opt?.speedup).toBeCloseTo(10 / 2.8, 12);
    // final gold .80 and .76: mean .78, sample std sqrt((.02^2 + .02^2) / 1)
    expect(opt?.finalGold.mean).toBeCloseTo(0.78, 12);
    expect(opt?.finalGold.std).toBeCloseTo(Math.sqrt(0.0008), 12);
    expect(uni?.timeToTarget).toEqual({ seconds: null, iteration: null });
    expect(uni?.speedup).toBeNull();
    expect(abl?.target).toBeCloseTo(0.74, 12);
    expect(abl?.timeToTarget.seconds).toBeCloseTo(5.1, 12);
    expect(abl?.speedup).toBeCloseTo(12 / 5.1, 12);
    // baseline totals, seed means: generation (4 + 6) / 2, scoring (2 + 4) / 2, training 2, wall (8 + 12) / 2,
    // evaluation 3 iterations x 1 s; tokens (200 + 240) / 2; prompts 2 x 10
    expect(base?.totals).toEqual({
      seconds: { generation: 5, scoring: 3, training: 2, other: 0, wall: 10, evaluation: 3 },
      tokensGenerated: 220,
      promptsRegenerated: 20,
    });
  });

  it("median wall-clock over seeds and the final gold paired with the baseline's, seed by seed", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 100])).toBe(3.5); // a slow run moves the mean (27), not the median
    const [base, opt, uni, abl] = aggregateBench([baseline, optune, uniform, ablation], BASELINE_ARM, "sampled").arms;
    expect(base?.finalGoldVsBaseline).toBeNull();
    expect(base?.medianWall).toBe(10); // runs of 8 and 12 s
    expect(opt?.medianWall).toBe(4);
    // optune ends .80 / .76 against the baseline's .70 / .74: differences .10 and .02
    expect(opt?.finalGoldVsBaseline).toEqual({ mean: expect.closeTo(0.06, 12), se: expect.closeTo(0.04, 12), lower: 0, seeds: 2 });
    // uniform ends .60 on both: -.10 and -.14
    expect(uni?.finalGoldVsBaseline).toEqual({ mean: expect.closeTo(-0.12, 12), se: expect.closeTo(0.02, 12), lower: 2, seeds: 2 });
    // the ablation's one seed (2) against the baseline's seed 2: .80 - .74, no standard error
    expect(abl?.finalGoldVsBaseline).toEqual({ mean: expect.closeTo(0.06, 12), se: null, lower: 0, seeds: 1 });
  });

  it("rejects runs of different lengths and a missing baseline", () => {
    const ragged: ArmRuns = { id: "x", runs: [{ seed: 1, metrics: run([{ gold: 0.5 }]) }, { seed: 2, metrics: run([{ gold: 0.5 }, { gold: 0.6 }]) }] };
    expect(() => armCurve(ragged, "sampled")).toThrow(/seed 2 has 2 iterations, expected 1/);
    expect(() => aggregateBench([optune], BASELINE_ARM, "sampled")).toThrow(/no baseline arm/);
  });
});

describe("bench end to end", () => {
  let result: BenchResult;
  const out = join(scratch, "bench");

  it("runs every arm on a tiny task and writes results.json, results.md and the PNG plot", async () => {
    result = await runBench({
      // The tiny task of the loop tests: preparing it and one run take about a second.
      base: {
        ...TINY_TASK,
        run: { cacheDir: join(scratch, "cache") },
      },
      preset: { name: "test", overrides: [], seeds: 2, ablationSeeds: 1 },
      out,
    });

    const json = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as BenchResult;
    // 6 main arms, 4 statistics, 3 weight functions.
    expect(json.arms.map((a) => a.id)).toEqual([
      "all+dpo",
      "all+wdpo",
      "uniform+dpo",
      "uniform+wdpo",
      "optune+dpo",
      "optune+wdpo",
      "optune+wdpo statistic=chosen",
      "optune+wdpo statistic=mean",
      "optune+wdpo statistic=gap",
      "optune+wdpo statistic=zscore",
      "optune+wdpo weightFn=linear",
      "optune+wdpo weightFn=exp",
      "optune+wdpo weightFn=sigmoid",
    ]);
    // 6 x 2 main runs; on seed 1 the ablations add mean, gap, zscore, exp and sigmoid (chosen and linear are optune+wdpo).
    expect(json.runs).toHaveLength(17);
    for (const r of json.runs) {
      expect(r.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
      expect(existsSync(join(r.runDir, "metrics.jsonl"))).toBe(true);
      expect(existsSync(join(r.runDir, "state"))).toBe(false);
    }
    for (const a of json.aggregate.arms) expect(a).toHaveProperty("speedup");
    expect(json.aggregate.arms.find((a) => a.id === "all+dpo")?.seeds).toEqual([1, 2]);
    expect(json.aggregate.arms.find((a) => a.id === "optune+wdpo weightFn=exp")?.seeds).toEqual([1]);
    // uniform and optune regenerate half the prompts after iteration 1: fewer prompts than all.
    const prompts = (id: string) => json.aggregate.arms.find((a) => a.id === id)?.totals.promptsRegenerated;
    expect(prompts("all+dpo")).toBe(32);
    expect(prompts("optune+dpo")).toBe(24);
    expect(prompts("uniform+dpo")).toBe(24);

    const markdown = readFileSync(join(out, "results.md"), "utf8");
    expect(markdown).toContain("| all+dpo |");
    expect(markdown).toContain("Ablation, selection statistic");
    expect(markdown).toContain("Ablation, wDPO weight function");
    const png = readFileSync(join(out, "gold-vs-wallclock.png"));
    expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    expect(png.length).toBeGreaterThan(10_000);
    expect(result.outputs.plot).toBe(join(out, "gold-vs-wallclock.png"));
  });

  it("benchmarks a user task (--config on your own model): relative paths start at baseDir", async () => {
    const userOut = join(scratch, "bench-user");
    const user = await runBench({
      base: {
        task: "user",
        model: { policy: "smollm" },
        prompts: { file: "prompts.jsonl", evalCount: 3, seed: 1 },
        reward: { sources: [{ type: "model", path: "reward_llama" }] },
        loop: { iterations: 2, prompts: 8, k: 2, batchPairs: 4 },
        eval: { prompts: 3, samples: 1 },
        sampling: { maxNewTokens: 8 },
      },
      baseDir: join(import.meta.dirname, "fixtures", "hf"),
      preset: { name: "test", overrides: [], seeds: 2, ablationSeeds: 0 },
      out: userOut,
    });
    expect(user.config.task).toBe("user");
    expect(user.arms.map((a) => a.group)).toEqual(["main", "main", "main", "main", "main", "main"]);
    expect(user.runs).toHaveLength(12);
    expect(existsSync(join(userOut, "gold-vs-wallclock.png"))).toBe(true);
  });

  it("refuses a bench directory that already holds runs", async () => {
    await expect(
      runBench({ base: { run: { cacheDir: join(scratch, "cache") } }, preset: { name: "test", overrides: [], seeds: 1, ablationSeeds: 0 }, out }),
    ).rejects.toThrow(/is not empty/);
  });
});
