// LoRA from TypeScript: the engine wrapper's adapters and base view, and `model.lora` runs of the loop (what they
// train, what they save, resume, config errors). The engine's math is checked natively (test_lora, test_parity).

import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";

import { main } from "../src/cli/index.js";
import { type Config, ConfigError, type ConfigInput, loadConfig } from "../src/config/schema.js";
import { createUserTask } from "../src/data/user_task.js";
import { EngineModel, packBatch } from "../src/engine/index.js";
import type { IterationMetrics } from "../src/loop/metrics.js";
import { runLoop, type RunResult } from "../src/loop/run.js";
import { createBuiltinTask } from "../src/tasks/builtin/task.js";
import { TINY_MODEL } from "./tiny_model.js";
import { TINY_TASK } from "./tiny_task.js";

const scratch = mkdtempSync(join(tmpdir(), "optune-lora-test-"));
const cacheDir = join(scratch, "cache");
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const LORA = { rank: 4, alpha: 8, targets: ["all-linear"] };

function loraConfig(name: string, overrides: ConfigInput = {}): Config {
  return loadConfig({
    seed: 7,
    ...TINY_TASK,
    optim: { lr: 1e-2 },
    ...overrides,
    model: { lora: LORA, ...overrides.model },
    run: { dir: join(scratch, name), cacheDir },
  });
}

async function run(config: Config, resume = false): Promise<RunResult> {
  return runLoop({ config, task: await createBuiltinTask(config), resume });
}

function withoutTimes(m: IterationMetrics): Omit<IterationMetrics, "seconds"> {
  const { seconds: _seconds, ...rest } = m;
  return rest;
}

const batch = packBatch([
  { prompt: [1, 2, 3], response: [4, 5, 6, 7] },
  { prompt: [1, 2, 3], response: [8, 9] },
]);

describe("EngineModel with LoRA adapters", () => {
  it("trains only the adapters; its base view keeps the starting model's log-probs", async () => {
    const model = await EngineModel.create(TINY_MODEL, 3);
    const start = await model.logprobs(batch);
    const params = await model.getParams();
    const info = await model.enableLora({ ...LORA, seed: 1 });
    expect(info.rank).toBe(4);
    expect(info.modules.length).toBeGreaterThan(0);
    expect(info.trainableParams).toBeLessThan(model.numParams);
    expect(model.lora).toEqual(info);
    const base = model.base();
    expect(Array.from((await model.logprobs(batch)).tokenLogps)).toEqual(Array.from(start.tokenLogps));

    const options = {
      loss: "dpo" as const,
      batch,
      chosen: [0],
      rejected: [1],
      refChosen: [start.seqLogps[0]!],
      refRejected: [start.seqLogps[1]!],
      optimizer: { lr: 0.01 },
    };
    for (let i = 0; i < 5; i++) await model.trainStep(options);
    const trained = await model.logprobs(batch);
    expect(trained.seqLogps[0]! - trained.seqLogps[1]!).toBeGreaterThan(start.seqLogps[0]! - start.seqLogps[1]!);
    expect(Array.from((await base.logprobs(batch)).tokenLogps)).toEqual(Array.from(start.tokenLogps));
    expect(Array.from(await model.getParams())).toEqual(Array.from(params));  // the frozen weights

    await expect(base.trainStep(options)).rejects.toThrow(/base view only computes log-probs and samples/);
    await expect(base.save(join(scratch, "x"))).rejects.toThrow(/base view/);
    await expect(model.trainStep({ ...options, refModel: base })).rejects.toThrow(/refChosen\/refRejected/);
    // another model's base view is refused too: the engine would run that model with its adapters on
    const other = await EngineModel.create(TINY_MODEL, 3);
    await expect(other.trainStep({ ...options, refModel: base })).rejects.toThrow(/refChosen\/refRejected/);
    await other.dispose();
    expect(() => base.base()).toThrow(/base view already/);
    await base.dispose();
    expect((await model.logprobs(batch)).tokenLogps).toEqual(trained.tokenLogps);  // the model lives on
    await model.dispose();
  });

  it("saves the merged model plus PEFT adapter files that load back into the same adapters", async () => {
    const model = await EngineModel.create(TINY_MODEL, 3);
    await model.enableLora({ ...LORA, seed: 1 });
    const start = await model.logprobs(batch);
    await model.trainStep({
      loss: "sft",
      batch,
      optimizer: { lr: 0.05 },
    });
    const dir = join(scratch, "saved");
    await model.save(dir);
    const adapterConfig = JSON.parse(readFileSync(join(dir, "adapter", "adapter_config.json"), "utf8"));
    expect(adapterConfig).toMatchObject({ peft_type: "LORA", r: 4, lora_alpha: 8, bias: "none" });
    expect(existsSync(join(dir, "adapter", "adapter_model.safetensors"))).toBe(true);

    const trained = await model.logprobs(batch);
    const merged = await EngineModel.load(dir);
    const mergedLogps = (await merged.logprobs(batch)).tokenLogps;
    trained.tokenLogps.forEach((v, i) => expect(mergedLogps[i]).toBeCloseTo(v, 4));

    const again = await EngineModel.create(TINY_MODEL, 3);
    await again.enableLora({ ...LORA, seed: 99 });
    await again.loadLoraAdapter(join(dir, "adapter"));
    expect(Array.from((await again.logprobs(batch)).tokenLogps)).toEqual(Array.from(trained.tokenLogps));
    expect(Array.from(trained.tokenLogps)).not.toEqual(Array.from(start.tokenLogps));
    await Promise.all([model.dispose(), merged.dispose(), again.dispose()]);
  });

  it("refuses what LoRA cannot do, with the reason", async () => {
    const model = await EngineModel.create(TINY_MODEL, 3);
    expect(() => model.base()).toThrow(/no LoRA adapters/);
    await expect(model.enableLora({ rank: 2, alpha: 4, targets: ["lm_head"] })).rejects.toThrow(
      /target module "lm_head" matches no linear layer/,
    );
    await expect(model.enableLora({ rank: 1.5, alpha: 4, targets: ["all-linear"] })).rejects.toThrow(/integer/);
    await expect(model.enableLora({ rank: 3e9, alpha: 4, targets: ["all-linear"] })).rejects.toThrow(
      /an integer in \[1, 4096\], got 3000000000/,
    );
    await expect(model.enableLora({ rank: Number.NaN, alpha: 4, targets: ["all-linear"] })).rejects.toThrow(/got NaN/);
    await model.enableLora({ rank: 2, alpha: 4, targets: ["all-linear"] });
    await expect(model.enableLora({ rank: 2, alpha: 4, targets: ["all-linear"] })).rejects.toThrow(/adapters already/);
    await expect(model.loadLoraAdapter(join(scratch, "nowhere"))).rejects.toThrow(/adapter_config.json: not found/);
    await model.dispose();
  });
});

describe("a user task with model.lora", () => {
  it.each([
    ["Qwen3", "qwen3"],
    ["Gemma 3", "gemma3"],
  ])("tunes a %s policy's adapters against its family's reward model and saves both forms", async (_, family) => {
    const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
    const task = await createUserTask({
      policy: join(FIXTURES, family),
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [{ type: "model", path: join(FIXTURES, `reward_${family}`) }] },
    });
    const config = loadConfig({
      seed: 3,
      model: { lora: { rank: 4, alpha: 8, targets: ["q_proj", "v_proj", "down_proj"] } },
      loop: { iterations: 2, prompts: 8, k: 2, batchPairs: 4 },
      eval: { prompts: 3, samples: 1 },
      sampling: { maxNewTokens: 8 },
      optim: { lr: 1e-2 },
      run: { dir: join(scratch, `user-${family}`), cacheDir, checkpointEvery: 0 },
    });
    const result = await runLoop({ config, task });
    expect(result.status).toBe("completed");
    expect(result.metrics[2]!.kl).toBeGreaterThan(0);
    const final = result.finalCheckpoint!;
    const adapter = JSON.parse(readFileSync(join(final, "adapter", "adapter_config.json"), "utf8"));
    expect(adapter.target_modules).toEqual(["q_proj", "v_proj", "down_proj"]);
    // the base plus the saved adapter is the merged checkpoint, to rounding
    const merged = await EngineModel.load(final);
    const again = await EngineModel.load(join(FIXTURES, family));
    await again.enableLora({ rank: 4, alpha: 8, targets: ["q_proj", "v_proj", "down_proj"] });
    await again.loadLoraAdapter(join(final, "adapter"));
    const [a, b] = [(await merged.logprobs(batch)).tokenLogps, (await again.logprobs(batch)).tokenLogps];
    a.forEach((v, i) => expect(b[i]).toBeCloseTo(v, 4));
    await Promise.all([merged.dispose(), again.dispose()]);
  });
});

describe("resuming a LoRA run", () => {
  it("refuses when the frozen base's files changed since the run started", async () => {
    const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
    const policyDir = join(scratch, "policy-copy");
    cpSync(join(FIXTURES, "smollm"), policyDir, { recursive: true });
    const makeTask = () =>
      createUserTask({
        policy: policyDir,
        prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
        maxNewTokens: 8,
        reward: { sources: [{ type: "model", path: join(FIXTURES, "reward_llama") }] },
      });
    const config = loadConfig({
      model: { lora: LORA },
      loop: { iterations: 1, prompts: 8, k: 2, batchPairs: 4 },
      eval: { prompts: 3, samples: 1 },
      sampling: { maxNewTokens: 8 },
      run: { dir: join(scratch, "changed-base"), cacheDir, checkpointEvery: 0 },
    });
    expect((await runLoop({ config, task: await makeTask() })).status).toBe("completed");
    const base = await EngineModel.load(policyDir);
    const params = await base.getParams();
    params[0] = (params[0] as number) + 0.5;
    await base.setParams(params);
    await base.save(policyDir);
    await base.dispose();
    const longer = { ...config, loop: { ...config.loop, iterations: 2 } };
    await expect(runLoop({ config: longer, task: await makeTask(), resume: true })).rejects.toThrow(
      /the reference model .*policy-copy holds other weights than when the run started/,
    );
  });
});

describe("optune run with model.lora", () => {
  let straight: RunResult;
  beforeAll(async () => {
    straight = await run(loraConfig("straight"));
  });

  it("trains adapters over the frozen starting policy, which stays the reference", async () => {
    expect(straight.status).toBe("completed");
    const [start, first] = [straight.metrics[0]!, straight.metrics[1]!];
    expect(first.train).not.toBeNull();
    expect(Math.abs(start.kl)).toBeLessThan(1e-6);  // the adapters start as zero
    expect(straight.metrics[2]!.kl).toBeGreaterThan(1e-4);  // the policy moved away from its frozen base
    const final = straight.finalCheckpoint!;
    expect(existsSync(join(final, "model.safetensors"))).toBe(true);
    expect(JSON.parse(readFileSync(join(final, "adapter", "adapter_config.json"), "utf8")).r).toBe(4);
    // the state holds the adapters and their AdamW moments, not the whole model
    expect(existsSync(join(straight.runDir, "state", "iter-0002", "policy", "adapter", "adapter_model.safetensors"))).toBe(true);
    expect(existsSync(join(straight.runDir, "state", "iter-0002", "policy", "model.safetensors"))).toBe(false);
    const optimizer = readFileSync(join(straight.runDir, "state", "iter-0002", "optimizer.safetensors"));
    const header = JSON.parse(optimizer.subarray(8, 8 + Number(optimizer.readBigUInt64LE(0))).toString("utf8"));
    const policy = await EngineModel.load(final);
    expect(Number(header.__metadata__.num_params)).toBeLessThan(policy.numParams);
    await policy.dispose();
  });

  it("resumed after iteration 1, gives the same iteration-2 record as an uninterrupted run", async () => {
    const config = loraConfig("resumed");
    await run({ ...config, loop: { ...config.loop, iterations: 1 } });
    const resumed = await run(config, true);
    expect(withoutTimes(resumed.metrics[2]!)).toEqual(withoutTimes(straight.metrics[2]!));
  });

  it("refreshes the reference to the merged policy when asked, and resumes after a refresh exactly", async () => {
    const loop = { ...TINY_TASK.loop, refreshReference: true, iterations: 3 };
    const result = await run(loraConfig("refresh", { loop }));
    expect(result.status).toBe("completed");
    expect(existsSync(join(result.runDir, "state", "iter-0003", "reference", "model.safetensors"))).toBe(true);
    const config = loraConfig("refresh-resumed", { loop });
    await run({ ...config, loop: { ...config.loop, iterations: 2 } });  // the reference was refreshed at 2
    const resumed = await run(config, true);
    expect(withoutTimes(resumed.metrics[3]!)).toEqual(withoutTimes(result.metrics[3]!));
  });

  it("runs from the --lora-rank flag and says what it trains", async () => {
    const dir = join(scratch, "cli");
    const config = loraConfig("cli-base");
    const file = join(scratch, "cli.json");
    writeFileSync(file, JSON.stringify({ ...config, model: {}, run: { ...config.run, dir } }));
    const logs: string[] = [];
    const out = vi.spyOn(console, "log").mockImplementation(() => {});
    const err = vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
      logs.push(String(chunk));
      return true;
    });
    try {
      expect(await main(["node", "optune", "run", "--config", file, "--lora-rank", "2", "--iterations", "1"])).toBe(0);
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    const saved = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Config;
    expect(saved.model.lora).toEqual({ rank: 2, alpha: 16, targets: ["all-linear"] });
    expect(logs.join("")).toMatch(/LoRA: rank 2, alpha 16 on \d+ layers: \d+ trainable parameters \(\d+\.\d+% of \d+\)/);
  });

  it("refuses a separate reference model, and accepts the GPU", () => {
    expect(() => loraConfig("x", { model: { reference: "/some/model" } })).toThrow(ConfigError);
    expect(() => loraConfig("x", { model: { reference: "/some/model" } })).toThrow(/reference is the policy's frozen base/);
    expect(loraConfig("x", { device: "cuda" }).device).toBe("cuda");
    expect(() => loraConfig("x", { model: { lora: { targets: [] } } })).toThrow(/at least one module/);
    expect(loadConfig({ model: { lora: {} } }).model.lora).toEqual({ rank: 8, alpha: 16, targets: ["all-linear"] });
  });
});
