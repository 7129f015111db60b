// End to end: two iterations of the online loop on the tiny SmolLM-style policy from a JSONL prompt file, once
// with each kind of reward source (a Hugging Face reward model with its own tokenizer, a JS module, an HTTP
// endpoint on loopback, and a weighted sum with the missing-EOS penalty); and the tiny Qwen3 and Gemma 3 policies
// with the tiny reward models of their families.

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";

import { ConfigSchema } from "../src/config/schema.js";
import { EngineModel } from "../src/engine/index.js";
import { createUserTask, type UserTask, type UserTaskOptions } from "../src/data/user_task.js";
import { userTaskOptions } from "../src/data/user_config.js";
import type { RewardConfig } from "../src/data/reward_spec.js";
import { runLoop } from "../src/loop/run.js";
import { HfTokenizer, loadModelDir } from "../src/tokenizer/index.js";

import { LOOP_PARTS, UserSections } from "./user_sections.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
const scratch = mkdtempSync(join(tmpdir(), "optune-user-run-"));
const moduleLog = join(scratch, "module_calls.jsonl");
const modulePath = join(scratch, "reward.mjs");
let server: Server;
let url: string;
let httpCalls = 0;

beforeAll(async () => {
  // Rewards longer answers that contain an "e"; logs what it was given.
  writeFileSync(
    modulePath,
    `import { appendFileSync } from "node:fs";\n` +
      `export function score(batch) {\n` +
      `  appendFileSync(${JSON.stringify(moduleLog)}, JSON.stringify(batch) + "\\n");\n` +
      `  return batch.responses.map((r) => r.length / 10 + (r.includes("e") ? 1 : 0));\n` +
      `}\n`,
  );
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString("utf8")));
    req.on("end", () => {
      httpCalls++;
      const batch = JSON.parse(body) as { responses: string[] };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ rewards: batch.responses.map((r) => -Math.abs(r.length - 5)) }));
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/reward`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((done) => server.close(done));
  rmSync(scratch, { recursive: true, force: true });
});

const rewardModel = { type: "model" as const, path: join(FIXTURES, "reward_llama") };

async function twoIterations(name: string, reward: RewardConfig) {
  const options: UserTaskOptions = {
    policy: join(FIXTURES, "smollm"),
    prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
    maxNewTokens: 8,
    reward,
  };
  const task = await createUserTask(options);
  const config = ConfigSchema.parse({
    seed: 3,
    loop: { iterations: 2, prompts: 8, k: 2, batchPairs: 4, rho: 0.5 },
    eval: { prompts: 3, samples: 1 },
    sampling: { maxNewTokens: 8 },
    optim: { lr: 1e-3 },
    run: { dir: join(scratch, name), checkpointEvery: 0 },
  });
  const result = await runLoop({ config, task });
  expect(result.status).toBe("completed");
  expect(result.lastIteration).toBe(2);
  expect(result.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
  // With the tokenizer files copied in, the final checkpoint is a complete model directory again.
  const final = result.finalCheckpoint!;
  task.tokenizer.copyFilesTo(final);
  const loaded = await loadModelDir(final);
  expect(loaded.model.config.vocabSize).toBe(task.tokenizer.vocabSize);
  await loaded.model.dispose();
  return { task, result };
}

describe("optune loop on a user model", () => {
  it("builds the task from the prompt file and the policy's tokenizer", async () => {
    const task = await createUserTask({
      policy: join(FIXTURES, "smollm"),
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [rewardModel] },
    });
    // 12 lines, one duplicate, 3 held out.
    expect(task.trainPrompts).toHaveLength(8);
    expect(task.evalPrompts).toHaveLength(3);
    const tok = await HfTokenizer.load(join(FIXTURES, "smollm"));
    const chat = [...task.trainPrompts, ...task.evalPrompts].find((p) => p.id === 3)!;
    expect(chat.messages).toEqual([{ role: "user", content: "What is the capital of France?" }]);
    expect(Array.from(chat.ids)).toEqual(Array.from(tok.encodeChat(chat.messages!, { addGenerationPrompt: true })));
    expect(task.stopTokens).toEqual([tok.tokenToId("<|im_end|>")]);
    const stop = tok.tokenToId("<|im_end|>")!;
    const ids = tok.encode(" hello", { addSpecialTokens: false });
    expect(task.decode(Int32Array.from([...ids, stop]))).toEqual({ text: " hello", endedWithEos: true });
    expect(task.decode(ids)).toEqual({ text: " hello", endedWithEos: false });
  });

  it("runs 2 iterations with a Hugging Face reward model (its own tokenizer)", async () => {
    const { result } = await twoIterations("rm", { sources: [rewardModel] });
    expect(result.metrics.at(-1)!.iteration).toBe(2);
  });

  it("runs 2 iterations with a JS module reward", async () => {
    await twoIterations("module", { sources: [{ type: "module", path: modulePath }] });
    const calls = readFileSync(moduleLog, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { prompts: string[]; responses: string[]; messages: unknown[] });
    expect(calls.length).toBeGreaterThan(0);
    expect(calls.every((c) => c.responses.length > 0)).toBe(true);
    // Chat prompts reach the scorer with their messages (rendered ChatML text starts with <|im_start|>).
    const items = calls.flatMap((c) => c.prompts.map((text, i) => ({ text, messages: c.messages[i] })));
    const chats = items.filter((item) => item.text.startsWith("<|im_start|>"));
    expect(chats.length).toBeGreaterThan(0);
    expect(chats.every((item) => Array.isArray(item.messages))).toBe(true);
    expect(items.filter((item) => !item.text.startsWith("<|im_start|>")).every((item) => item.messages === null)).toBe(true);
  });

  it("runs 2 iterations with an HTTP endpoint reward", async () => {
    httpCalls = 0;
    await twoIterations("http", { sources: [{ type: "http", url, batchSize: 4, concurrency: 2 }] });
    expect(httpCalls).toBeGreaterThan(0);
  });

  it("runs 2 iterations with a weighted sum and the missing-EOS penalty", async () => {
    await twoIterations("weighted", {
      sources: [rewardModel, { type: "module", path: modulePath, weight: 0.5 }, { type: "http", url, weight: 0.1 }],
      missingEosPenalty: 1,
    });
  });
});

describe("training and evaluation rewards", () => {
  it("share one reward model when evalReward is absent, freed when both are disposed", async () => {
    const options: UserTaskOptions = {
      policy: join(FIXTURES, "smollm"),
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [rewardModel] },
    };
    const task = await createUserTask(options);
    const load = vi.spyOn(EngineModel, "load");
    try {
      const proxy = await task.createRewardSource();
      const evaluator = await task.createEvalSource();
      expect(load).toHaveBeenCalledTimes(1);
      const batch = {
        prompts: [{ text: "Hello world,", ids: task.trainPrompts[0]!.ids }],
        responses: [{ text: " hi", ids: Int32Array.from([5]), endedWithEos: false }],
      };
      const first = await proxy.score(batch);
      await proxy.dispose?.();
      await proxy.dispose?.(); // a second dispose of the same handle changes nothing
      expect(await evaluator.score(batch)).toEqual(first); // still loaded
      await evaluator.dispose?.();
      const again = await task.createRewardSource(); // both gone: a new one loads
      expect(load).toHaveBeenCalledTimes(2);
      await again.dispose?.();
      // with an evalReward of its own, evaluation loads its own
      const separate = await createUserTask({ ...options, evalReward: { sources: [rewardModel] } });
      const a = await separate.createRewardSource();
      const b = await separate.createEvalSource();
      expect(load).toHaveBeenCalledTimes(4);
      await Promise.all([a.dispose?.(), b.dispose?.()]);
    } finally {
      load.mockRestore();
    }
  });
});

/** Two iterations of 8 prompts on `task`, recording every token id the loop decodes. */
async function runRecordingIds(task: UserTask, name: string, settings: { k: number; samples: number; lr?: number }) {
  const seen: number[] = [];
  const watched = { ...task, decode: (ids: Int32Array) => (seen.push(...ids), task.decode(ids)) };
  const config = ConfigSchema.parse({
    seed: 3,
    loop: { iterations: 2, prompts: 8, k: settings.k, batchPairs: 4 },
    eval: { prompts: 3, samples: settings.samples },
    sampling: { maxNewTokens: 8 },
    ...(settings.lr === undefined ? {} : { optim: { lr: settings.lr } }),
    run: { dir: join(scratch, name), checkpointEvery: 0 },
  });
  return { result: await runLoop({ config, task: watched }), seen };
}

describe("a policy whose vocabulary is padded past its tokenizer's", () => {
  it("never samples the padding ids (they have no text) and runs", async () => {
    // The SmolLM fixture's shape with 400 vocabulary rows for its tokenizer's 330 ids, as Qwen2 models pad theirs;
    // random weights give the padding rows ~18% of the mass, so unmasked draws would hit them at once.
    const base = await EngineModel.load(join(FIXTURES, "smollm"));
    const dir = join(scratch, "padded");
    const padded = await EngineModel.create({ ...base.config, vocabSize: 400 }, 5);
    await padded.save(dir);
    await base.dispose();
    await padded.dispose();
    for (const f of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]) {
      copyFileSync(join(FIXTURES, "smollm", f), join(dir, f));
    }
    const task = await createUserTask({
      policy: dir,
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [{ type: "module", path: modulePath }] },
    });
    expect(task.vocabLimit).toBe(330);
    const { result, seen } = await runRecordingIds(task, "padded-run", { k: 4, samples: 2 });
    expect(result.status).toBe("completed");
    expect(seen.length).toBeGreaterThan(200);
    expect(Math.max(...seen)).toBeLessThan(330);
  });
});

describe("a Qwen3 policy with a Qwen3 reward model", () => {
  it("runs 2 iterations, samples no padding row, and saves a Qwen3 directory", async () => {
    // The qwen3 fixture pads its embeddings to 384 rows for 352 tokens, as real Qwen3 does; two EOS ids.
    const task = await createUserTask({
      policy: join(FIXTURES, "qwen3"),
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [{ type: "model", path: join(FIXTURES, "reward_qwen3") }] },
    });
    expect(task.vocabLimit).toBe(352);
    expect(task.stopTokens).toEqual([task.tokenizer.tokenToId("<|im_end|>"), task.tokenizer.tokenToId("<|endoftext|>")]);
    const { result, seen } = await runRecordingIds(task, "qwen3-run", { k: 2, samples: 1, lr: 1e-3 });
    expect(result.status).toBe("completed");
    expect(result.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
    expect(result.metrics.every((m) => Number.isFinite(m.gold.sampled))).toBe(true);
    expect(seen.length).toBeGreaterThan(0);
    expect(Math.max(...seen)).toBeLessThan(352);
    const final = result.finalCheckpoint!;
    task.tokenizer.copyFilesTo(final);
    const loaded = await loadModelDir(final);
    expect(loaded.model.config).toMatchObject({ arch: "qwen3", vocabSize: 384, headDim: 16 });
    await loaded.model.dispose();
  });
});

describe("a Gemma 3 policy with a Gemma 3 reward model", () => {
  it("runs 2 iterations and saves a gemma3_text directory with the policy's config", async () => {
    // Sliding-window and full layers with their own RoPE bases; two EOS ids (<eos>, <end_of_turn>).
    const policy = join(FIXTURES, "gemma3");
    const task = await createUserTask({
      policy,
      prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
      maxNewTokens: 8,
      reward: { sources: [{ type: "model", path: join(FIXTURES, "reward_gemma3") }] },
    });
    // The tokenizer covers every embedding row (420), so no sampling limit is needed.
    expect(task.vocabLimit).toBeUndefined();
    expect(task.stopTokens).toEqual([task.tokenizer.tokenToId("<eos>"), task.tokenizer.tokenToId("<end_of_turn>")]);
    const { result, seen } = await runRecordingIds(task, "gemma3-run", { k: 2, samples: 1, lr: 1e-3 });
    expect(result.status).toBe("completed");
    expect(result.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
    expect(result.metrics.every((m) => Number.isFinite(m.gold.sampled))).toBe(true);
    expect(seen.length).toBeGreaterThan(0);
    expect(Math.max(...seen)).toBeLessThan(420);
    const final = result.finalCheckpoint!;
    task.tokenizer.copyFilesTo(final);
    const loaded = await loadModelDir(final);
    const original = await EngineModel.load(policy);
    expect(loaded.model.config.arch).toBe("gemma3_text");
    expect(loaded.model.config).toEqual(original.config);
    // the run trained the policy: the saved weights are not the fixture's
    expect(await loaded.model.getParams()).not.toEqual(await original.getParams());
    await Promise.all([loaded.model.dispose(), original.dispose()]);
  });
});

describe("resuming a user run whose prompts encode differently", () => {
  it("refuses when a chat template variable (Llama 3.2's date) changed the prompt ids, and resumes when it did not", async () => {
    // A template that writes a date into every prompt, as Llama 3.2's and 3.3's do with today's date.
    const template =
      "{% for m in messages %}{{ m.role }} ({{ date_string }}): {{ m.content }}\n{% endfor %}" +
      "{% if add_generation_prompt %}assistant:{% endif %}";
    const makeTask = (date: string) =>
      createUserTask({
        policy: join(FIXTURES, "smollm"),
        prompts: { file: join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
        maxNewTokens: 8,
        reward: { sources: [rewardModel] },
        chatTemplate: template,
        chatTemplateArgs: { date_string: date },
      });
    const config = (iterations: number) =>
      ConfigSchema.parse({
        seed: 3,
        loop: { iterations, prompts: 8, k: 2, batchPairs: 4 },
        eval: { prompts: 3, samples: 1 },
        sampling: { maxNewTokens: 8 },
        run: { dir: join(scratch, "dated"), checkpointEvery: 0 },
      });
    expect((await runLoop({ config: config(1), task: await makeTask("26 Jul 2024") })).status).toBe("completed");
    await expect(runLoop({ config: config(2), task: await makeTask("27 Jul 2024"), resume: true })).rejects.toThrow(
      /cannot resume .*dated: the prompts encode to other token ids than when the run started .*set model.chatTemplateArgs.date_string in .*dated\/config.json/,
    );
    const resumed = await runLoop({ config: config(2), task: await makeTask("26 Jul 2024"), resume: true });
    expect(resumed.status).toBe("completed");
    expect(resumed.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
  });
});

describe("user run config sections", () => {

  it("maps a config to task options, resolving paths against the config's folder", async () => {
    const parsed = UserSections.parse({
      model: { policy: "smollm" },
      prompts: { file: "prompts.jsonl", evalCount: 3, seed: 1 },
      reward: {
        sources: [
          { type: "model", path: "reward_llama" },
          { type: "http", url: "http://127.0.0.1:9/score", weight: 0.5, retries: 1 },
        ],
        missingEosPenalty: 0.5,
      },
    });
    const options = userTaskOptions({ ...parsed, ...LOOP_PARTS }, FIXTURES);
    expect(options.reward).toEqual({
      sources: [
        { type: "model", path: "reward_llama", weight: 1 },
        { type: "http", url: "http://127.0.0.1:9/score", weight: 0.5, retries: 1 },
      ],
      missingEosPenalty: 0.5,
    });
    expect(options.prompts).toMatchObject({ file: "prompts.jsonl", evalCount: 3, promptField: "prompt", messagesField: "messages" });
    const task = await createUserTask(options);
    expect(task.policyDir).toBe(join(FIXTURES, "smollm"));
    expect(task.trainPrompts).toHaveLength(8);
    const source = await task.createRewardSource();
    expect(source.name).toContain("reward_llama");
    expect(source.name).toContain("missing EOS");
    await source.dispose?.();
  });

  it("says what a run on your own model still needs", () => {
    const parsed = UserSections.parse({ model: {}, reward: {} });
    expect(() => userTaskOptions({ ...parsed, ...LOOP_PARTS }, ".")).toThrow(
      /needs model\.policy .*, prompts\.file .*, reward\.sources/,
    );
  });

  it("rejects unknown reward types and misspelled fields", () => {
    expect(UserSections.safeParse({ model: {}, reward: { sources: [{ type: "gold" }] } }).success).toBe(false);
    expect(UserSections.safeParse({ model: {}, reward: { sources: [{ type: "http", url: "http://x", retry: 2 }] } }).success).toBe(false);
    expect(UserSections.safeParse({ model: {}, prompts: { file: "p.jsonl", evalFraction: 1 }, reward: {} }).success).toBe(false);
  });
});
