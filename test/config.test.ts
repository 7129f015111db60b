import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/config/schema.js";

function issuesOf(partial: unknown): readonly string[] {
  try {
    loadConfig(partial);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues;
  }
  throw new Error("expected a ConfigError");
}

describe("loadConfig", () => {
  it("resolves every default from an empty or missing config", () => {
    const config = loadConfig({});
    expect(config).toEqual({
      seed: 1,
      device: "cpu",
      precision: "fp32",
      task: "builtin",
      model: {},
      loop: {
        iterations: 6,
        prompts: 1024,
        rho: 0.5,
        strategy: "optune",
        statistic: "chosen",
        k: 8,
        merge: false,
        tieThreshold: 0.001,
        epochs: 1,
        batchPairs: 16,
        refreshReference: false,
      },
      loss: { type: "wdpo", beta: 1, beta2: 1, weightFn: "linear", labelSmoothing: 0, simpoGamma: 0.5 },
      optim: { lr: 1.5e-4, weightDecay: 0, maxGradNorm: 1, warmupSteps: 0, betas: [0.9, 0.999], skipNonFinite: false },
      sampling: { temperature: 1, topK: 0, topP: 1, maxNewTokens: 16 },
      eval: { prompts: 500, samples: 4 },
      run: { dir: "runs/latest", checkpointEvery: 1, cacheDir: ".optune/cache" },
      reward: { source: "model", missingEosPenalty: 0 },
      prepare: {
        seed: 0,
        trainPrompts: 3000,
        heldOutPrompts: 1000,
        arch: "gpt2",
        dModel: 64,
        nLayer: 2,
        nHead: 4,
        dFf: 256,
        sftEpochs: 30,
        sftLr: 3e-3,
        sftBatch: 32,
        rewardInit: "policy",
        rewardPairsPerPrompt: 4,
        rewardPolicySamples: 8,
        rewardFlipProb: 0.1,
        rewardEpochs: 8,
        rewardLr: 2e-3,
        rewardBatch: 32,
      },
    });
    expect(loadConfig(undefined)).toEqual(config);
  });

  it("keeps defaults beside the fields that are given", () => {
    const config = loadConfig({ loop: { rho: 0.25, strategy: "uniform" }, model: { policy: "ckpt/sft.bin" } });
    expect(config.loop.rho).toBe(0.25);
    expect(config.loop.strategy).toBe("uniform");
    expect(config.loop.k).toBe(8);
    expect(config.model.policy).toBe("ckpt/sft.bin");
    expect(config.loss.type).toBe("wdpo");
  });

  it("lists every bad field with its path and reason", () => {
    const issues = issuesOf({
      seed: -1,
      device: "gpu",
      loop: { rho: 2, k: 2.5, merge: "yes", statistic: "median", colour: 1 },
      loss: { beta: 0 },
      optim: { betas: [0.9, 1.5], lr: "fast" },
      sampling: { topP: 0, topK: -1 },
      eval: 3,
      run: { dir: "" },
      extra: true,
    });
    expect([...issues].sort()).toEqual(
      [
        "seed: must be an integer in [0, 4294967295], got -1",
        'device: must be one of \'cpu\', \'cuda\', \'auto\', got "gpu"',
        "loop.rho: must be a number in (0, 1], got 2",
        "loop.k: must be an integer in [2, 64], got 2.5",
        'loop.merge: must be true or false, got "yes"',
        "loop.statistic: must be one of 'chosen', 'mean', 'gap', 'zscore', got \"median\"",
        "loop.colour: unknown field",
        "loss.beta: must be a number in (0, 100], got 0",
        "optim.betas[1]: must be a number in [0, 1), got 1.5",
        'optim.lr: must be a number in (0, 1], got "fast"',
        "sampling.topP: must be a number in (0, 1], got 0",
        "sampling.topK: must be an integer in [0, 1024], got -1",
        "eval: must be an object, got 3",
        'run.dir: must be a non-empty path, got ""',
        "extra: unknown field",
      ].sort(),
    );
  });

  it("puts the issues in the error message, one per line", () => {
    expect(() => loadConfig({ loop: { rho: 0 } })).toThrow("invalid config:\n  loop.rho: must be a number in (0, 1], got 0");
    expect(issuesOf("not a config")).toEqual(['(config): must be an object, got "not a config"']);
    expect(issuesOf({ optim: { betas: [0.9] } })).toEqual(["optim.betas: must be a pair [beta1, beta2], got [0.9]"]);
    expect(issuesOf({ optim: { warmupSteps: 2.5 } })).toEqual(["optim.warmupSteps: must be an integer in [0, 1000000], got 2.5"]);
    expect(issuesOf({ loss: { labelSmoothing: 0.5 } })).toEqual(["loss.labelSmoothing: must be a number in [0, 0.5), got 0.5"]);
    expect(issuesOf({ loss: { type: "hinge", labelSmoothing: 0.1 } })).toEqual([
      "loss.labelSmoothing: only used by loss.type dpo, wdpo and simpo, got type 'hinge'",
    ]);
  });

  it("accepts a user task with its model, prompts and reward sources", () => {
    const config = loadConfig({
      task: "user",
      model: { policy: "models/policy", tokenizer: "models/tok" },
      prompts: { file: "data/prompts.jsonl", evalCount: 4 },
      reward: { sources: [{ type: "module", path: "reward.mjs" }], missingEosPenalty: 1 },
    });
    expect(config.task).toBe("user");
    expect(config.model).toEqual({ policy: "models/policy", tokenizer: "models/tok" });
    expect(config.prompts?.file).toBe("data/prompts.jsonl");
    expect(config.prompts?.evalFraction).toBe(0.1);
    expect(config.reward.sources).toEqual([{ type: "module", path: "reward.mjs", weight: 1 }]);
    // The built-in task's prepare limits do not apply to a user task.
    expect(loadConfig({ ...config, loop: { prompts: 5000 } }).loop.prompts).toBe(5000);
  });

  it("lists every field a user task is missing", () => {
    expect(issuesOf({ task: "user" })).toEqual([
      "model.policy: required when task is 'user' (a Hugging Face model directory)",
      "prompts.file: required when task is 'user' (a JSONL prompt file)",
      "reward.sources: required when task is 'user' (at least one reward source)",
    ]);
    expect(issuesOf({ task: "user", model: { policy: "p" }, prompts: {}, reward: { sources: [] } })).toEqual([
      "reward.sources: must list at least one reward source, got []",
      "prompts.file: must be a non-empty path, got nothing",
    ]);
    expect(issuesOf({ task: "other" })).toEqual(["task: must be one of 'builtin', 'user', got \"other\""]);
  });

  it("keeps each task's reward fields to that task", () => {
    expect(
      issuesOf({
        model: { tokenizer: "tok" },
        prompts: { file: "p.jsonl" },
        reward: { sources: [{ type: "module", path: "r.mjs" }], missingEosPenalty: 1 },
      }),
    ).toEqual([
      "model.tokenizer: only used when task is 'user', got task 'builtin'",
      "prompts: only used when task is 'user', got task 'builtin'",
      "reward.sources: only used when task is 'user', got task 'builtin'",
      "reward.missingEosPenalty: only used when task is 'user', got task 'builtin'",
    ]);
    expect(
      issuesOf({
        task: "user",
        model: { policy: "p" },
        prompts: { file: "p.jsonl" },
        reward: { source: "gold", sources: [{ type: "module", path: "r.mjs" }] },
      }),
    ).toEqual(["reward.source: 'gold' is the built-in task's own reward; task 'user' scores with reward.sources"]);
  });
});
