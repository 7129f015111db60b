// The OPTune loop end to end on a tiny built-in task: prepared models (and their cache), the files and metrics a
// run writes, which pairs change between iterations, cached reference log-probs, resume, the reward-model
// source, config errors and the `optune run` command.

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { stringify as stringifyYaml } from "yaml";

import { main } from "../src/cli/index.js";
import { summaryTable } from "../src/cli/summary.js";
import { type Config, ConfigError, type ConfigInput, loadConfig } from "../src/config/schema.js";
import { EngineModel, packBatch } from "../src/engine/index.js";
import { readMetrics, type IterationMetrics } from "../src/loop/metrics.js";
import { sequenceLogps } from "../src/loop/reference.js";
import { runLoop, type RunResult } from "../src/loop/run.js";
import { loadRunState } from "../src/loop/state.js";
import { RewardModelSource } from "../src/rewards/reward_model.js";
import { ensurePrepared, preparedPaths } from "../src/tasks/builtin/prepare.js";
import { createBuiltinTask } from "../src/tasks/builtin/task.js";
import { encode, encodePrompt } from "../src/tasks/builtin/tokenizer.js";
import { TINY_TASK } from "./tiny_task.js";

const scratch = mkdtempSync(join(tmpdir(), "optune-loop-test-"));
const cacheDir = join(scratch, "cache");

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A task small enough that preparing it and running two iterations take about a second. */
function tinyConfig(name: string, overrides: ConfigInput = {}): Config {
  return loadConfig({
    seed: 7,
    ...TINY_TASK,
    optim: { lr: 1e-3 },
    ...overrides,
    run: { dir: join(scratch, name), cacheDir, ...overrides.run },
  });
}

async function run(config: Config, resume = false): Promise<RunResult> {
  return runLoop({ config, task: await createBuiltinTask(config), resume });
}

/** A metrics record without its timings (which differ between any two runs). */
function withoutTimes(m: IterationMetrics): Omit<IterationMetrics, "seconds"> {
  const { seconds: _seconds, ...rest } = m;
  return rest;
}

let straight: RunResult;

beforeAll(async () => {
  straight = await run(tinyConfig("straight"));
});

describe("prepare", () => {
  it("reuses the cached models on the second call and prepares anew when a setting changes", async () => {
    const config = tinyConfig("unused");
    const again = await ensurePrepared(config.prepare, cacheDir);
    expect(again.reused).toBe(true);
    expect(again.paths).toEqual(preparedPaths(cacheDir, config.prepare));
    expect(existsSync(join(again.paths.policy, "model.safetensors"))).toBe(true);
    expect(existsSync(join(again.paths.reward, "model.safetensors"))).toBe(true);
    const changed = { ...config.prepare, rewardFlipProb: 0.2 };
    expect(preparedPaths(cacheDir, changed).dir).not.toBe(again.paths.dir);
  });
});

describe("runLoop", () => {
  it("writes the resolved config, one metrics record per iteration, checkpoints and the run state", () => {
    const dir = straight.runDir;
    expect(straight.status).toBe("completed");
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))).toEqual(tinyConfig("straight"));
    const metrics = readMetrics(join(dir, "metrics.jsonl"));
    expect(metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
    for (const m of metrics.slice(1)) {
      expect(Object.keys(m).sort()).toEqual(
        ["generation", "gold", "iteration", "kl", "lengths", "proxy", "seconds", "train", "weights", "winRate"].sort(),
      );
      for (const v of [m.proxy.chosen, m.proxy.rejected, m.proxy.mean, m.gold.greedy, m.gold.sampled, m.kl, m.train.loss]) {
        expect(Number.isFinite(v)).toBe(true);
      }
      expect(m.gold.greedySe).toBeGreaterThanOrEqual(0);
      expect(m.winRate.sampled).toBeGreaterThanOrEqual(0);
      expect(m.weights?.mean).toBeCloseTo(1, 6); // linear wDPO weights are normalized per minibatch
      expect(m.generation.tokensGenerated).toBeGreaterThan(0);
      expect(m.seconds.total).toBeGreaterThan(0);
    }
    expect(metrics[1]?.generation.promptsRegenerated).toBe(16); // iteration 1 fills the whole pool
    expect(metrics[2]?.generation.promptsRegenerated).toBe(8); // rho * N afterwards
    expect(metrics[0]?.winRate).toEqual({ greedy: 0.5, sampled: 0.5 }); // the start against itself: all ties
    for (const name of ["iter-0001", "iter-0002", "final"]) {
      expect(existsSync(join(dir, "checkpoints", name, "model.safetensors"))).toBe(true);
      expect(existsSync(join(dir, "checkpoints", name, "config.json"))).toBe(true);
    }
    expect(JSON.parse(readFileSync(join(dir, "state", "latest.json"), "utf8"))).toEqual({ iteration: 2, dir: "iter-0002" });
  });

  it("records response lengths: the new pairs' from the pool, the eval responses' within the sampling limit", () => {
    const metrics = readMetrics(join(straight.runDir, "metrics.jsonl"));
    const pairs = [...loadRunState(straight.runDir)!.state.pool.entries.values()].map((e) => e.pair!);
    const newest = pairs.filter((p) => p.iteration === 2);
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    expect(newest.length).toBe(8);
    expect(metrics[2]!.lengths!.chosen).toBe(mean(newest.map((p) => p.chosenIds.length)));
    expect(metrics[2]!.lengths!.rejected).toBe(mean(newest.map((p) => p.rejectedIds.length)));
    expect(metrics[0]!.lengths).toMatchObject({ chosen: null, rejected: null });
    const limit = tinyConfig("straight").sampling.maxNewTokens;
    for (const m of metrics) {
      const l = m.lengths!;
      for (const length of [l.greedyLength, l.sampledLength]) expect(length >= 1 && length <= limit).toBe(true);
      for (const eos of [l.greedyEos, l.sampledEos]) expect(eos >= 0 && eos <= 1).toBe(true);
    }
    // the end-of-run table: the sampled eval length and eos share, "-" for a line written before lengths existed
    const { lengths: _lengths, ...older } = metrics[2]!;
    const table = summaryTable([metrics[2]!, older]).split("\n");
    expect(table[0]).toMatch(/ KL +length +eos +regen/);
    expect(table[1]).toContain(` ${metrics[2]!.lengths!.sampledLength.toFixed(1)}  ${metrics[2]!.lengths!.sampledEos.toFixed(2)} `);
    expect(table[2]).toMatch(/ - +- +8 /);
  });

  it("trains with loss.type hinge, with simpo and with label-smoothed wdpo", async () => {
    const oneIteration = { ...TINY_TASK.loop, iterations: 1 };
    const hinge = await run(tinyConfig("hinge", { loss: { type: "hinge", beta: 1 }, loop: oneIteration }));
    const simpo = await run(tinyConfig("simpo", { loss: { type: "simpo", beta: 2 }, loop: oneIteration }));
    const smoothed = await run(tinyConfig("smoothed", { loss: { labelSmoothing: 0.2 }, loop: oneIteration }));
    const [base, h, sp, s] = [straight.metrics[1]!, hinge.metrics[1]!, simpo.metrics[1]!, smoothed.metrics[1]!];
    expect(h.weights).toMatchObject({ mean: 1, min: 1, max: 1 }); // hinge and simpo are unweighted, like dpo
    expect(sp.weights).toMatchObject({ mean: 1, min: 1, max: 1 });
    // SimPO's implicit rewards are beta x the mean token log-probs: negative, unlike DPO's log-ratios near 0 at start
    expect(sp.train.chosenReward!).toBeLessThan(0);
    for (const m of [h, sp, s]) {
      expect(m.train.steps).toBe(base.train.steps);
      expect(Number.isFinite(m.train.loss)).toBe(true);
      expect(m.train.loss).not.toBe(base.train.loss);
    }
  });

  it("passes optim.warmupSteps to the engine: the same first step, smaller steps after it", async () => {
    const warm = await run(tinyConfig("warmup", { optim: { lr: 1e-3, warmupSteps: 1000 }, loop: { ...TINY_TASK.loop, iterations: 1 } }));
    const [base, ramped] = [straight.metrics[1]!, warm.metrics[1]!];
    expect(ramped.train.steps).toBe(base.train.steps);
    expect(ramped.train.steps).toBeGreaterThan(1);
    // the first minibatch's loss is computed before any update, so only the later steps (lr / 1000 ... 3 lr / 1000)
    // move the mean loss, and the policy ends elsewhere
    expect(ramped.train.loss).not.toBe(base.train.loss);
    expect(ramped.kl).not.toBe(base.kl);
    expect(Math.abs(ramped.kl)).toBeLessThan(Math.abs(base.kl));
  });

  it("keeps unselected prompts' pairs and gives selected prompts new pairs of the new iteration", async () => {
    const config = tinyConfig("pairs", { loop: { iterations: 1, prompts: 16, k: 3, rho: 0.25, batchPairs: 4, tieThreshold: 0 } });
    await run(config);
    const after1 = loadRunState(config.run.dir)!.state.pool;
    await run({ ...config, loop: { ...config.loop, iterations: 2 } }, true);
    const after2 = loadRunState(config.run.dir)!.state.pool;

    const renewed = [...after2.entries.values()].filter((e) => e.pair?.iteration === 2).map((e) => e.promptId);
    expect(renewed).toHaveLength(4);
    // optune regenerates the prompts whose chosen reward was lowest.
    const byChosen = [...after1.entries.values()].sort(
      (a, b) => a.pair!.rewardChosen - b.pair!.rewardChosen || a.promptId - b.promptId,
    );
    expect(renewed.sort((a, b) => a - b)).toEqual(byChosen.slice(0, 4).map((e) => e.promptId).sort((a, b) => a - b));
    for (const [id, entry] of after2.entries) {
      if (renewed.includes(id)) {
        expect(entry.history).toHaveLength(2);
      } else {
        expect(entry.pair).toEqual(after1.entries.get(id)!.pair);
        expect(entry.history).toHaveLength(1);
      }
    }
  });

  it("computes reference log-probs once per new response and caches the reference model's values", async () => {
    const metrics = straight.metrics;
    // Each new pair needs its chosen and rejected response (one when they are the same sample) and nothing else.
    expect(metrics[1]!.generation.referenceSequences).toBeGreaterThanOrEqual(16);
    expect(metrics[1]!.generation.referenceSequences).toBeLessThanOrEqual(32);
    expect(metrics[2]!.generation.referenceSequences).toBeGreaterThanOrEqual(8);
    expect(metrics[2]!.generation.referenceSequences).toBeLessThanOrEqual(16);

    const config = tinyConfig("straight");
    const task = await createBuiltinTask(config);
    const reference = await EngineModel.load(task.policyDir);
    const pool = loadRunState(straight.runDir)!.state.pool;
    const prompts = new Map(task.trainPrompts.map((p) => [p.id, p.ids] as const));
    const entries = [...pool.entries.values()];
    const fresh = await sequenceLogps(
      reference,
      entries.flatMap((e) => [
        { prompt: prompts.get(e.promptId)!, response: e.pair!.chosenIds },
        { prompt: prompts.get(e.promptId)!, response: e.pair!.rejectedIds },
      ]),
    );
    entries.forEach((e, j) => {
      expect(e.pair!.refLogpChosen).toBeCloseTo(fresh[2 * j]!, 4);
      expect(e.pair!.refLogpRejected).toBeCloseTo(fresh[2 * j + 1]!, 4);
    });
    await reference.dispose();
  });

  it("recomputes the cache under a refreshed reference", async () => {
    const config = tinyConfig("refresh", { loop: { iterations: 2, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, refreshReference: true } });
    const result = await run(config);
    const pooled = 2 * 16; // chosen and rejected of every pair, recomputed under the new reference
    expect(result.metrics[2]!.generation.referenceSequences).toBeGreaterThanOrEqual(pooled + 8);
    expect(existsSync(join(config.run.dir, "state", "iter-0002", "reference", "model.safetensors"))).toBe(true);
  });

  it("resumed after iteration 1, gives the same iteration-2 record as an uninterrupted run", async () => {
    const config = tinyConfig("resumed");
    const first = await run({ ...config, loop: { ...config.loop, iterations: 1 } });
    expect(first.lastIteration).toBe(1);
    const resumed = await run(config, true);
    expect(resumed.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
    // Policy weights, AdamW moments, pool and random streams are all restored, so iteration 2 matches exactly.
    expect(withoutTimes(resumed.metrics[2]!)).toEqual(withoutTimes(straight.metrics[2]!));
    expect(readMetrics(join(config.run.dir, "metrics.jsonl")).map((m) => m.iteration)).toEqual([0, 1, 2]);
  });

  it("stops between steps when asked, keeping the last completed iteration", async () => {
    const config = tinyConfig("stopped");
    let polls = 0;
    const result = await runLoop({ config, task: await createBuiltinTask(config), shouldStop: () => ++polls > 3 });
    expect(result.status).toBe("interrupted");
    expect(result.finalCheckpoint).toBeNull();
    expect(loadRunState(config.run.dir)!.state.iteration).toBe(result.lastIteration);
  });

  it("refuses to overwrite an existing run unless resuming", async () => {
    await expect(run(tinyConfig("straight"))).rejects.toThrow(/already holds a run/);
  });
});

describe("RewardModelSource", () => {
  it("scores prompt + response ids through the engine's reward model", async () => {
    const config = tinyConfig("unused");
    const { paths } = await ensurePrepared(config.prepare, cacheDir);
    const source = await RewardModelSource.load(paths.reward, { chunkSize: 2 });
    const model = await EngineModel.load(paths.reward);
    const prompt = { text: "copy: ab", ids: encodePrompt("copy: ab") };
    const responses = [
      { text: "ab", ids: encode("ab", { eos: true }), endedWithEos: true },
      { text: "b", ids: encode("b", { eos: true }), endedWithEos: true },
      { text: "a", ids: encode("a"), endedWithEos: false },
    ];
    const scores = await source.score({ prompts: responses.map(() => prompt), responses });
    const direct = await model.scores(packBatch(responses.map((r) => ({ prompt: prompt.ids, response: r.ids }))));
    expect(scores).toHaveLength(3);
    scores.forEach((s, i) => expect(s).toBeCloseTo(direct[i]!, 5));
    expect(new Set(scores).size).toBe(3);
    await expect(source.score({ prompts: [prompt], responses: [] })).rejects.toThrow(/1 prompts but 0 responses/);
    await source.dispose();
    await model.dispose();
    const policy = await EngineModel.load(paths.policy);
    expect(() => new RewardModelSource(policy, "policy")).toThrow(/rewardModel: true/);
    await policy.dispose();
  });
});

describe("optune run", () => {
  it("lists every bad field of the config file and flags", async () => {
    const file = join(scratch, "bad.yaml");
    writeFileSync(file, "loop:\n  k: 1\n  strategy: best\nprepare:\n  nHead: 3\nsampling:\n  colour: red\n");
    const errors: string[] = [];
    const spy = vi.spyOn(console, "error").mockImplementation((...args) => {
      errors.push(args.join(" "));
    });
    try {
      const code = await main(["node", "optune", "run", "--config", file, "--rho", "2", "--lr", "fast", "--out", join(scratch, "bad")]);
      expect(code).toBe(1);
    } finally {
      spy.mockRestore();
    }
    const message = errors.join("\n");
    for (const expected of [
      "loop.k: must be an integer in [2, 64], got 1",
      "loop.strategy: must be one of 'optune', 'uniform', 'all', got \"best\"",
      "loop.rho: must be a number in (0, 1], got 2",
      'optim.lr: must be a number in (0, 1], got "fast"',
      "sampling.colour: unknown field",
    ]) {
      expect(message).toContain(expected);
    }
  });

  it("reports fields that are valid alone but not together", () => {
    expect(() => loadConfig({ prepare: { dModel: 64, nHead: 3 }, loop: { prompts: 5000 } })).toThrow(ConfigError);
    try {
      loadConfig({ prepare: { dModel: 64, nHead: 3 }, loop: { prompts: 5000 } });
    } catch (err) {
      expect((err as ConfigError).issues).toEqual([
        "loop.prompts: must be <= prepare.trainPrompts (3000), got 5000",
        "prepare.nHead: must divide prepare.dModel (64), got 3",
      ]);
    }
  });

  it("runs from flags and a YAML config, then extends the run with --resume --iterations", async () => {
    const config = tinyConfig("cli");
    const yamlFile = join(scratch, "cli.yaml");
    // --out overrides the file's run.dir.
    writeFileSync(yamlFile, stringifyYaml({ ...config, run: { ...config.run, dir: join(scratch, "ignored") } }));
    const logs: string[] = [];
    const spy = vi.spyOn(console, "log").mockImplementation((...args) => {
      logs.push(args.join(" "));
    });
    try {
      expect(await main(["node", "optune", "run", "--config", yamlFile, "--iterations", "1", "--out", config.run.dir])).toBe(0);
      expect(await main(["node", "optune", "run", "--resume", "--iterations", "2", "--out", config.run.dir])).toBe(0);
    } finally {
      spy.mockRestore();
    }
    expect(readMetrics(join(config.run.dir, "metrics.jsonl")).map((m) => m.iteration)).toEqual([0, 1, 2]);
    const saved = JSON.parse(readFileSync(join(config.run.dir, "config.json"), "utf8")) as Config;
    expect(saved.loop.iterations).toBe(2);
    expect(logs.join("\n")).toMatch(/iter +proxy chosen/);
    // the built-in task ends with a command that answers one of its held-out prompts from the final checkpoint
    const hint = logs.find((l) => l.startsWith("try it: npx optune generate --model "));
    expect(hint).toMatch(/--model .*checkpoints[/\\]final --prompt "[^"]+" --chat$/);
  });
});
