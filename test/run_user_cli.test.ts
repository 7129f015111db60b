// `optune run` with `task: user`, through the real CLI (bin/optune.js on the compiled dist/): a config next to
// its own reward module, pointing at the tiny fixtures by relative paths, run for 2 iterations and resumed for a
// third; the checkpoints are complete model directories. A one-iteration run of the tiny Mistral policy with the
// tiny Mistral reward model keeps the family and its sliding window in the checkpoint; one of a multimodal Gemma 3
// directory tunes its language model and saves the text model. A config missing its fields fails with a clear
// message.

import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { EngineModel } from "../src/engine/index.js";
import { loadModelDir } from "../src/tokenizer/index.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURES = join(ROOT, "test", "fixtures", "hf");
const scratch = mkdtempSync(join(tmpdir(), "optune-run-user-cli-"));
// The config lives in its own folder and the CLI runs from another, so relative paths must follow the config.
const configDir = join(scratch, "project");
const elsewhere = join(scratch, "elsewhere");
const runDir = join(scratch, "run");
const moduleLog = join(scratch, "module_calls.jsonl");

function optune(args: string[]) {
  const result = spawnSync(process.execPath, [join(ROOT, "bin", "optune.js"), "run", ...args], {
    cwd: elsewhere,
    encoding: "utf8",
    timeout: 120_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

// The gemma3 fixture as a multimodal Gemma 3 directory (Gemma3ForConditionalGeneration, no vision tower needed to
// read its language model): config.json wrapped as text_config, the tensors under save_pretrained's multimodal
// names ("language_model.model.*": the safetensors header's keys renamed, the data as it was).
function multimodalGemma3Copy(dst: string): void {
  const src = join(FIXTURES, "gemma3");
  mkdirSync(dst, { recursive: true });
  for (const name of readdirSync(src))
    if (name !== "config.json" && name !== "model.safetensors") copyFileSync(join(src, name), join(dst, name));
  const text = JSON.parse(readFileSync(join(src, "config.json"), "utf8")) as Record<string, unknown>;
  delete text["architectures"];
  const config = { architectures: ["Gemma3ForConditionalGeneration"], model_type: "gemma3", text_config: text };
  writeFileSync(join(dst, "config.json"), JSON.stringify(config));
  const bytes = readFileSync(join(src, "model.safetensors"));
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const renamed = Object.fromEntries(
    Object.entries(header).map(([k, v]) => [k.startsWith("model.") ? `language_model.${k}` : k, v]),
  );
  let json = JSON.stringify(renamed);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(join(dst, "model.safetensors"), Buffer.concat([length, Buffer.from(json), bytes.subarray(8 + n)]));
}

function metricsIterations(): number[] {
  return readFileSync(join(runDir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => (JSON.parse(line) as { iteration: number }).iteration);
}

beforeAll(() => {
  // The CLI runs the compiled code, so compile the sources under test first.
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (tsc.status !== 0) throw new Error(`tsc failed:\n${tsc.stdout}${tsc.stderr}`);

  mkdirSync(configDir);
  mkdirSync(elsewhere);
  writeFileSync(
    join(configDir, "reward.mjs"),
    `import { appendFileSync } from "node:fs";\n` +
      `export function score(batch) {\n` +
      `  appendFileSync(${JSON.stringify(moduleLog)}, batch.responses.length + "\\n");\n` +
      `  return batch.responses.map((r) => r.length / 10);\n` +
      `}\n`,
  );
  const fixtures = relative(configDir, FIXTURES);
  const config = {
    task: "user",
    seed: 3,
    model: { policy: join(fixtures, "smollm") },
    prompts: { file: join(fixtures, "prompts.jsonl"), evalCount: 3, seed: 1 },
    reward: {
      sources: [
        { type: "module", path: "reward.mjs" },
        { type: "model", path: join(fixtures, "reward_llama"), weight: 0.5 },
      ],
      missingEosPenalty: 0.5,
    },
    loop: { iterations: 2, prompts: 8, k: 2, batchPairs: 4 },
    eval: { prompts: 3, samples: 1 },
    sampling: { maxNewTokens: 8 },
    optim: { lr: 1e-3 },
    run: { dir: runDir, checkpointEvery: 1 },
  };
  writeFileSync(join(configDir, "run.json"), JSON.stringify(config, null, 2));
}, 180_000);

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("optune run with task: user", () => {
  it("runs 2 iterations and saves checkpoints that are complete model directories", async () => {
    const run = optune(["--config", join(configDir, "run.json")]);
    expect(run.stderr).not.toMatch(/optune:/);
    expect(run.status).toBe(0);
    expect(run.stdout).toContain(`final checkpoint ${join(runDir, "checkpoints", "final")}`);
    expect(metricsIterations()).toEqual([0, 1, 2]);
    // The module reward, found next to the config, scored the responses.
    expect(readFileSync(moduleLog, "utf8").trim().split("\n").length).toBeGreaterThan(0);

    const tokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"];
    for (const name of ["iter-0001", "iter-0002", "final"]) {
      const files = readdirSync(join(runDir, "checkpoints", name));
      expect(files).toEqual(expect.arrayContaining(["config.json", "model.safetensors", ...tokenizerFiles]));
    }
    const final = join(runDir, "checkpoints", "final");
    for (const name of tokenizerFiles) {
      expect(readFileSync(join(final, name), "utf8")).toBe(readFileSync(join(FIXTURES, "smollm", name), "utf8"));
    }
    const model = await EngineModel.load(final);
    await model.dispose();
    // Tokenizer and weights load together from the one directory.
    const loaded = await loadModelDir(final);
    expect(loaded.tokenizer.vocabSize).toBeLessThanOrEqual(loaded.model.config.vocabSize);
    await loaded.model.dispose();

    // The saved config holds absolute paths, so the run resumes without its config file and from anywhere.
    const saved = JSON.parse(readFileSync(join(runDir, "config.json"), "utf8")) as {
      model: { policy: string };
      reward: { sources: Array<{ path: string }> };
    };
    expect(saved.model.policy).toBe(join(FIXTURES, "smollm"));
    expect(saved.reward.sources[0]!.path).toBe(join(configDir, "reward.mjs"));
    const resumed = optune(["--resume", "--out", runDir, "--iterations", "3"]);
    expect(resumed.stderr).not.toMatch(/optune:/);
    expect(resumed.status).toBe(0);
    expect(metricsIterations()).toEqual([0, 1, 2, 3]);
    expect(existsSync(join(runDir, "checkpoints", "iter-0003", "tokenizer.json"))).toBe(true);
  });

  it("tunes a Mistral policy with a Mistral reward model and saves a Mistral directory with its window", async () => {
    // The mistral fixture's every layer slides (window 6, shorter than the rendered prompts); the reward model has
    // no window and reads the decoded responses with its own copy of the tokenizer and [INST] template.
    const fixtures = relative(configDir, FIXTURES);
    const mistralRun = join(scratch, "mistral-run");
    const path = join(configDir, "mistral.json");
    writeFileSync(
      path,
      JSON.stringify({
        task: "user",
        seed: 5,
        model: { policy: join(fixtures, "mistral") },
        prompts: { file: join(fixtures, "prompts.jsonl"), evalCount: 2, seed: 1 },
        reward: { sources: [{ type: "model", path: join(fixtures, "reward_mistral") }] },
        loop: { iterations: 1, prompts: 4, k: 2, batchPairs: 2 },
        eval: { prompts: 2, samples: 1 },
        sampling: { maxNewTokens: 8 },
        optim: { lr: 1e-3 },
        run: { dir: mistralRun },
      }),
    );
    const run = optune(["--config", path]);
    expect(run.stderr).not.toMatch(/optune:/);
    expect(run.status).toBe(0);
    const final = join(mistralRun, "checkpoints", "final");
    expect(run.stdout).toContain(`final checkpoint ${final}`);
    for (const name of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]) {
      expect(readFileSync(join(final, name), "utf8")).toBe(readFileSync(join(FIXTURES, "mistral", name), "utf8"));
    }
    // config.json in transformers' form: the model type, the causal LM head and the window as the fixture has them.
    const config = JSON.parse(readFileSync(join(final, "config.json"), "utf8")) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: "mistral", architectures: ["MistralForCausalLM"], sliding_window: 6 });
    const loaded = await loadModelDir(final);
    const original = await EngineModel.load(join(FIXTURES, "mistral"));
    expect(loaded.model.config).toMatchObject({ arch: "mistral", slidingWindow: 6 });
    expect(loaded.model.config).toEqual(original.config);
    // the run trained the policy: the saved weights are not the fixture's
    expect(await loaded.model.getParams()).not.toEqual(await original.getParams());
    await Promise.all([loaded.model.dispose(), original.dispose()]);
  });

  it("tunes a multimodal Gemma 3 directory as its language model and saves the multimodal model", async () => {
    const multimodal = join(scratch, "gemma3-multimodal");
    multimodalGemma3Copy(multimodal);
    writeFileSync(join(multimodal, "preprocessor_config.json"), '{"image_processor_type": "Gemma3ImageProcessor"}');
    const gemmaRun = join(scratch, "gemma3-run");
    const path = join(configDir, "gemma3.json");
    writeFileSync(
      path,
      JSON.stringify({
        task: "user",
        seed: 7,
        model: { policy: multimodal },
        prompts: { file: join(relative(configDir, FIXTURES), "prompts.jsonl"), evalCount: 2, seed: 1 },
        reward: { sources: [{ type: "module", path: "reward.mjs" }] },
        loop: { iterations: 1, prompts: 4, k: 2, batchPairs: 2 },
        eval: { prompts: 2, samples: 1 },
        sampling: { maxNewTokens: 8 },
        optim: { lr: 1e-3 },
        run: { dir: gemmaRun },
      }),
    );
    const run = optune(["--config", path]);
    expect(run.stderr).not.toMatch(/optune:/);
    expect(run.status).toBe(0);
    const final = join(gemmaRun, "checkpoints", "final");
    const config = JSON.parse(readFileSync(join(final, "config.json"), "utf8")) as Record<string, unknown>;
    const source = JSON.parse(readFileSync(join(multimodal, "config.json"), "utf8")) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: "gemma3", architectures: ["Gemma3ForConditionalGeneration"], dtype: "float32" });
    expect(config["text_config"]).toEqual(source["text_config"]);
    const weights = readFileSync(join(final, "model.safetensors"));
    const names = Object.keys(JSON.parse(weights.subarray(8, 8 + Number(weights.readBigUInt64LE(0))).toString("utf8")));
    expect(names.filter((n) => n !== "__metadata__").every((n) => n.startsWith("language_model.model."))).toBe(true);
    expect(readFileSync(join(final, "preprocessor_config.json"), "utf8")).toContain("Gemma3ImageProcessor");
    const loaded = await loadModelDir(final);
    const text = await EngineModel.load(join(FIXTURES, "gemma3"));
    const wrapped = await EngineModel.load(multimodal);
    expect(wrapped.config).toEqual(text.config);
    expect(await wrapped.getParams()).toEqual(await text.getParams());
    expect(loaded.model.config).toEqual(text.config);
    expect(await loaded.model.getParams()).not.toEqual(await text.getParams());
    await Promise.all([loaded.model.dispose(), text.dispose(), wrapped.dispose()]);
  });

  it("lists the fields a user config is missing, without a stack trace", () => {
    const path = join(configDir, "incomplete.json");
    writeFileSync(path, JSON.stringify({ task: "user", model: { policy: "policy" }, run: { dir: join(scratch, "bad") } }));
    const run = optune(["--config", path]);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain("optune: invalid config:");
    expect(run.stderr).toContain("prompts.file: required when task is 'user' (a JSONL prompt file)");
    expect(run.stderr).toContain("reward.sources: required when task is 'user' (at least one reward source)");
    expect(run.stderr).not.toContain("model.policy");
    expect(run.stderr).not.toMatch(/^\s+at /m);
    expect(existsSync(join(scratch, "bad"))).toBe(false);
  });

  it("names a prompt file that does not exist, without a stack trace", () => {
    const path = join(configDir, "no_prompts.yaml");
    writeFileSync(
      path,
      [
        "task: user",
        `model: { policy: ${JSON.stringify(join(relative(configDir, FIXTURES), "smollm"))} }`,
        "prompts: { file: data/missing.jsonl }",
        "reward: { sources: [{ type: module, path: reward.mjs }] }",
        `run: { dir: ${JSON.stringify(join(scratch, "bad2"))} }`,
      ].join("\n"),
    );
    const run = optune(["--config", path]);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain(`optune: cannot read prompt file ${join(configDir, "data", "missing.jsonl")}`);
    expect(run.stderr).not.toMatch(/^\s+at /m);
  });
});
