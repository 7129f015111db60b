// `optune generate`: greedy generations against transformers' (test/fixtures/hf/generate.json, made by
// tools/make_generate_fixtures.py), text / chat / id prompts alike, seeded sampling that does not depend on the
// batch, log-probs that `optune logprobs` confirms, and errors that name the problem.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { main } from "../src/cli/index.js";
import { runGenerate, type GenerateOptions } from "../src/cli/generate.js";
import { runLogprobs } from "../src/cli/logprobs.js";
import { EngineModel, packBatch } from "../src/engine/index.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
const dir = mkdtempSync(join(tmpdir(), "optune-generate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Case {
  prompt_ids: number[];
  token_ids: number[];
  token_logprobs: number[];
  min_top2_gap: number;
  finished: boolean;
}
const fixture = JSON.parse(readFileSync(join(FIXTURES, "generate.json"), "utf8")) as {
  max_new_tokens: number;
  policies: Record<string, Case[]>;
};
const parity = JSON.parse(readFileSync(join(FIXTURES, "parity.json"), "utf8")) as {
  policies: Record<string, Array<{ prompt: string; messages: Array<{ role: string; content: string }> | null }>>;
};

interface Response {
  text?: string;
  token_ids: number[];
  logprob: number;
  n_tokens: number;
  finished: boolean;
  token_logprobs?: number[];
}

function input(name: string, lines: unknown[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n");
  return path;
}

const DEFAULTS = { samples: 1, maxNewTokens: 12, temperature: 1, topK: 0, topP: 1, seed: 0, batchSize: 16 };

async function generate(options: Partial<GenerateOptions> & { model: string }): Promise<Response[][]> {
  const out: string[] = [];
  await runGenerate({ ...DEFAULTS, ...options }, (line) => out.push(line));
  return out.map((l) => (JSON.parse(l) as { responses: Response[] }).responses);
}

describe.each(Object.keys(fixture.policies))("optune generate on %s", (name) => {
  const model = join(FIXTURES, name);
  const cases = fixture.policies[name]!.filter((c) => c.min_top2_gap >= 1e-3);

  it("greedy: transformers' tokens and log-probs, with id prompts in batches", async () => {
    expect(cases.length).toBeGreaterThanOrEqual(3);
    const path = input(`${name}_ids.jsonl`, cases.map((c) => ({ prompt_ids: c.prompt_ids })));
    const out = await generate({ model, input: path, temperature: 0, maxNewTokens: fixture.max_new_tokens, perToken: true, batchSize: 2 });
    expect(out).toHaveLength(cases.length);
    out.forEach(([r], k) => {
      const want = cases[k]!;
      expect(r!.token_ids).toEqual(want.token_ids);
      expect(r!.finished).toBe(want.finished);
      expect(r!.n_tokens).toBe(want.token_ids.length);
      r!.token_logprobs!.forEach((v, t) => expect(Math.abs(v - want.token_logprobs[t]!)).toBeLessThan(1e-4 * Math.max(1, Math.abs(v))));
      expect(typeof r!.text).toBe("string"); // the model directory's tokenizer decodes them
    });
  });

  it("text and chat prompts go through the tokenizer: the same as their ids", async () => {
    const items = parity.policies[name]!;
    const lines = items.map((i) => (i.messages === null ? { prompt: i.prompt } : { messages: i.messages }));
    const byText = await generate({ model, input: input(`${name}_text.jsonl`, lines), temperature: 0 });
    const all = fixture.policies[name]!; // the fixture's prompts are these items' ids, in order
    const byIds = await generate({ model, input: input(`${name}_all_ids.jsonl`, all.map((c) => ({ prompt_ids: c.prompt_ids }))), temperature: 0 });
    expect(byText).toEqual(byIds);
  });
});

describe("optune generate sampling", () => {
  const model = join(FIXTURES, "smollm");
  const lines = [{ prompt: "Hello" }, { prompt: "The weather" }, { prompt_ids: [5, 6, 7] }, { prompt: "Once upon" }];
  const path = input("sampling.jsonl", lines);

  // The tokens are the same in any batch; the log-probs to rounding (other batch shapes sum in other orders).
  function expectSame(a: Response[][], b: Response[][]): void {
    const strip = (x: Response[][]) => x.map((rs) => rs.map(({ logprob, token_logprobs, ...rest }) => rest));
    expect(strip(b)).toEqual(strip(a));
    a.flat().forEach((r, k) => expect(Math.abs(r.logprob - b.flat()[k]!.logprob)).toBeLessThan(1e-5));
  }

  it("is seeded, and a line's responses do not depend on the batch", async () => {
    const a = await generate({ model, input: path, samples: 3, seed: 11, batchSize: 4 });
    const b = await generate({ model, input: path, samples: 3, seed: 11, batchSize: 1 });
    expectSame(a, b);
    expect(a.every((responses) => responses.length === 3 && responses.every((r) => r.n_tokens === 12))).toBe(true);
    const c = await generate({ model, input: path, samples: 3, seed: 12, batchSize: 4 });
    expect(c).not.toEqual(a);
  });

  it("gives each response's log-prob under the model, as `optune logprobs` does", async () => {
    const ids = [{ prompt_ids: [5, 6, 7] }, { prompt_ids: [40, 41, 42, 43] }];
    const out = await generate({ model, input: input("ids.jsonl", ids), samples: 2, seed: 3, temperature: 0.7, topP: 0.9 });
    const pairs = out.flatMap((responses, i) => responses.map((r) => ({ prompt_ids: ids[i]!.prompt_ids, response_ids: r.token_ids })));
    const scored: Array<{ logprob: number }> = [];
    await runLogprobs({ model, input: input("score.jsonl", pairs), batchSize: 4 }, (l) => scored.push(JSON.parse(l) as { logprob: number }));
    out.flat().forEach((r, k) => expect(Math.abs(r.logprob - scored[k]!.logprob)).toBeLessThan(1e-4 * Math.max(1, Math.abs(r.logprob))));
  });

  it("without --max-new-tokens, draws what the model's positions leave after the longest prompt (at most 64)", async () => {
    const long = { prompt_ids: Array.from({ length: 100 }, (_, i) => 5 + (i % 50)) };
    const [[r]] = await generate({ model, input: input("long.jsonl", [long, { prompt_ids: [5] }]), maxNewTokens: undefined, temperature: 0 });
    expect(r!.finished || r!.n_tokens === 28).toBe(true); // 128 positions - 100
    expect(r!.n_tokens).toBeLessThanOrEqual(28);
    const [[short]] = await generate({ model, input: input("short.jsonl", [{ prompt_ids: [5] }]), maxNewTokens: undefined, temperature: 0 });
    expect(short!.finished || short!.n_tokens === 64).toBe(true);
    const tooLong = { prompt_ids: Array(128).fill(5) };
    await expect(generate({ model, input: input("full.jsonl", [tooLong]), maxNewTokens: undefined })).rejects.toThrow(
      /:1: the prompt's 128 tokens fill the 128 positions of .*smollm, leaving none for a response/,
    );
  });

  it("takes one --prompt, as text or as a chat's user message", async () => {
    const text = await generate({ model, prompt: "Hello", temperature: 0 });
    expectSame(text, (await generate({ model, input: path, temperature: 0 })).slice(0, 1));
    const chat = await generate({ model, prompt: "Hello", chat: true, temperature: 0 });
    const asLine = await generate({ model, input: input("chat.jsonl", [{ messages: [{ role: "user", content: "Hello" }] }]), temperature: 0 });
    expect(chat).toEqual(asLine);
    expect(chat[0]![0]!.token_ids).not.toEqual(text[0]![0]!.token_ids);
  });
});

describe("optune generate --adapter (and optune logprobs --adapter)", () => {
  it("samples and scores with PEFT-format adapters on the weights as the merged model does", async () => {
    const base = join(FIXTURES, "smollm");
    const model = await EngineModel.load(base);
    await model.enableLora({ rank: 4, alpha: 8, targets: ["q_proj", "v_proj", "down_proj"], seed: 5 });
    const batch = packBatch([{ prompt: [5, 6, 7], response: [40, 41, 42, 43, 44] }, { prompt: [9, 9], response: [50, 51, 52] }]);
    for (let i = 0; i < 5; i++) await model.trainStep({ loss: "sft", batch, optimizer: { lr: 5e-2 } });
    const adapter = join(dir, "adapter"), merged = join(dir, "merged");
    await model.saveLoraAdapter(adapter);
    await model.save(merged); // the merged weights, no tokenizer: --tokenizer names the base's
    await model.dispose();
    const lines = input("adapter.jsonl", [{ prompt: "Hello" }, { prompt_ids: [5, 6, 7] }]);
    const sampling = { input: lines, samples: 2, seed: 9, perToken: true };
    const withAdapter = await generate({ model: base, adapter, ...sampling });
    const fromMerged = await generate({ model: merged, tokenizer: base, ...sampling });
    const plain = await generate({ model: base, ...sampling });
    withAdapter.flat().forEach((r, k) => {
      const m = fromMerged.flat()[k]!;
      expect(r.token_ids).toEqual(m.token_ids);
      expect(Math.abs(r.logprob - m.logprob)).toBeLessThan(1e-4 * Math.max(1, Math.abs(r.logprob)));
    });
    // `optune logprobs --adapter` scores them as the merged model does
    const pairs = [{ prompt_ids: [5, 6, 7], response_ids: withAdapter[1]![0]!.token_ids }];
    const score = async (o: { model: string; adapter?: string }) => {
      const out: Array<{ logprob: number }> = [];
      await runLogprobs({ ...o, input: input("adapter_pairs.jsonl", pairs), batchSize: 4 }, (l) => out.push(JSON.parse(l) as { logprob: number }));
      return out[0]!.logprob;
    };
    const [scoredWith, scoredMerged] = [await score({ model: base, adapter }), await score({ model: merged })];
    expect(Math.abs(scoredWith - scoredMerged)).toBeLessThan(1e-4 * Math.max(1, Math.abs(scoredMerged)));
    expect(Math.abs(scoredWith - withAdapter[1]![0]!.logprob)).toBeLessThan(1e-4 * Math.max(1, Math.abs(scoredWith)));
    // the adapters matter: the base alone gives other tokens or other log-probs
    const differs = plain.flat().some((r, k) => Math.abs(r.logprob - withAdapter.flat()[k]!.logprob) > 1e-2);
    expect(differs).toBe(true);
    await expect(generate({ model: base, adapter: join(dir, "nowhere"), prompt: "Hi" })).rejects.toThrow(/adapter_config\.json: not found/);
  });
});

describe("optune generate errors", () => {
  const model = join(FIXTURES, "smollm");

  it.each([
    [{}, /give either --input FILE\.jsonl or --prompt TEXT/],
    [{ prompt: "a", input: "x.jsonl" }, /give either --input FILE\.jsonl or --prompt TEXT/],
    [{ input: "LINES", chat: true }, /--chat applies to --prompt/],
    [{ prompt: "a", chatTemplateArgs: { x: 1 } }, /--chat-template-args applies to chats/],
    [{ prompt: "a", maxNewTokens: 128 }, /--max-new-tokens 128 leaves no room for a prompt in the 128 positions/],
    [{ prompt: "a", model: "/nonexistent-model" }, /\/nonexistent-model: not a directory \(expected a Hugging Face model directory/],
  ])("refuses %j", async (options, message) => {
    const lines = input("one.jsonl", [{ prompt: "Hi" }]);
    const o = { ...options } as Partial<GenerateOptions>;
    if (o.input === "LINES") o.input = lines;
    await expect(generate({ model, ...o })).rejects.toThrow(message);
  });

  it.each([
    ["{oops", /:2: not valid JSON/],
    ["", /:2: empty line; every line needs a prompt/],
    [{ prompt: 3 }, /:2: "prompt" must be a string/],
    [{ prompt_ids: [] }, /:2: "prompt_ids" must be a non-empty list of token ids/],
    [{ prompt_ids: [5000] }, /:2: token id 5000 is outside the vocabulary of .*smollm \(330 tokens\)/],
    [{ prompt_ids: Array(120).fill(5) }, /:2: the prompt's 120 tokens and --max-new-tokens 12 exceed the 128 positions/],
    [{ messages: [{ role: "user" }] }, /:2: "messages": messages\[0\]\.content must be a string/],
  ])("names the line: %j", async (bad, message) => {
    await expect(generate({ model, input: input("bad.jsonl", [{ prompt: "Hi" }, bad]) })).rejects.toThrow(message);
  });

  it("runs through the CLI; a reward model or a bad flag value exits with 1", async () => {
    const written: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => written.push(chunk)) as typeof process.stdout.write;
    try {
      const argv = ["node", "optune", "generate", "--model", model, "--prompt", "Hi", "--samples", "2", "--temperature", "0"];
      expect(await main([...argv, "--max-new-tokens", "5"])).toBe(0);
    } finally {
      process.stdout.write = write;
    }
    const [line] = written.join("").trim().split("\n").map((l) => JSON.parse(l) as { responses: Response[] });
    expect(line!.responses).toHaveLength(2);
    expect(line!.responses[0]).toEqual(line!.responses[1]); // greedy: both samples alike
    expect(line!.responses[0]!.n_tokens).toBe(5);

    const errors: string[] = [];
    const error = console.error, stderr = process.stderr.write;
    console.error = (msg: string) => errors.push(msg);
    process.stderr.write = ((chunk: string) => errors.push(chunk)) as typeof process.stderr.write;
    try {
      expect(await main(["node", "optune", "generate", "--model", join(FIXTURES, "reward_gpt2"), "--prompt", "Hi"])).toBe(1);
      expect(await main(["node", "optune", "generate", "--model", model, "--prompt", "Hi", "--top-p", "0"])).toBe(1);
      expect(await main(["node", "optune", "generate", "--model", model, "--prompt", "Hi", "--device", "gpu"])).toBe(1);
    } finally {
      console.error = error;
      process.stderr.write = stderr;
    }
    const all = errors.join("\n");
    expect(all).toMatch(/reward_gpt2 is a reward model; generate needs a causal language model/);
    expect(all).toMatch(/--top-p.*must be a number in \(0, 1\]/);
    expect(all).toMatch(/--device.*must be one of 'cpu', 'cuda', 'auto'/);
  });
});
