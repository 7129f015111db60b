// `optune logprobs`: text, chat and id inputs against transformers' log-probs (test/fixtures/hf/parity.json),
// per-token output, and errors that name the input line.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { main } from "../src/cli/index.js";
import { runLogprobs } from "../src/cli/logprobs.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
const dir = mkdtempSync(join(tmpdir(), "optune-logprobs-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface PolicyItem {
  prompt: string;
  response: string;
  messages: Array<{ role: string; content: string }> | null;
  prompt_ids: number[];
  response_ids: number[];
  token_logprobs: number[];
  logprob: number;
}
const parity = JSON.parse(readFileSync(join(FIXTURES, "parity.json"), "utf8")) as { policies: Record<string, PolicyItem[]> };

function input(name: string, lines: unknown[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n");
  return path;
}

async function run(options: {
  model: string;
  input: string;
  perToken?: boolean;
  batchSize?: number;
  chatTemplateArgs?: Record<string, unknown>;
}): Promise<Array<Record<string, unknown>>> {
  const out: string[] = [];
  await runLogprobs({ batchSize: 2, ...options }, (line) => out.push(line));
  return out.map((l) => JSON.parse(l) as Record<string, unknown>);
}

function close(actual: unknown, expected: number): void {
  expect(Math.abs((actual as number) - expected)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(expected)));
}

describe.each(["smollm", "qwen2", "qwen3", "gemma3", "mistral"])("optune logprobs on %s", (name) => {
  const items = parity.policies[name]!;
  const model = join(FIXTURES, name);

  it("text and chat lines give transformers' summed log-probs, one line out per line in", async () => {
    const lines = items.map((i) => (i.messages === null ? { prompt: i.prompt, response: i.response } : { messages: i.messages, response: i.response }));
    const out = await run({ model, input: input(`${name}_text.jsonl`, lines) });
    expect(out).toHaveLength(items.length);
    out.forEach((o, k) => {
      close(o["logprob"], items[k]!.logprob);
      expect(o["n_tokens"]).toBe(items[k]!.response_ids.length);
      expect(o["token_logprobs"]).toBeUndefined();
    });
  });

  it("id lines with --per-token give per-token values too", async () => {
    const lines = items.map((i) => ({ prompt_ids: i.prompt_ids, response_ids: i.response_ids }));
    const out = await run({ model, input: input(`${name}_ids.jsonl`, lines), perToken: true, batchSize: 3 });
    out.forEach((o, k) => {
      close(o["logprob"], items[k]!.logprob);
      const tokens = o["token_logprobs"] as number[];
      expect(tokens).toHaveLength(items[k]!.token_logprobs.length);
      tokens.forEach((v, t) => close(v, items[k]!.token_logprobs[t]!));
    });
  });
});

describe("optune logprobs --chat-template-args", () => {
  // transformers' rendering of a chat with enable_thinking false (tokenizer_cases.json, made by make_hf_fixtures.py)
  const cases = JSON.parse(readFileSync(join(FIXTURES, "tokenizer_cases.json"), "utf8")) as {
    qwen3: { template_arg_chats: Array<{ messages: unknown[]; ids: number[]; template_args: Record<string, unknown> }> };
  };
  const off = cases.qwen3.template_arg_chats.find((c) => c.template_args["enable_thinking"] === false)!;
  const model = join(FIXTURES, "qwen3");

  it("renders chat lines with the extra variables: the same log-prob as transformers' prompt ids", async () => {
    const response = "Paris.";
    const argsPath = input("chat.jsonl", [{ messages: off.messages, response }]);
    const withArgs: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => withArgs.push(chunk)) as typeof process.stdout.write;
    try {
      const argv = ["node", "optune", "logprobs", "--model", model, "--input", argsPath, "--chat-template-args"];
      expect(await main([...argv, '{"enable_thinking": false}'])).toBe(0);
      expect(await main(argv.slice(0, -1))).toBe(0);
    } finally {
      process.stdout.write = write;
    }
    const [thinkingOff, plain] = withArgs.join("").trim().split("\n").map((l) => JSON.parse(l) as { logprob: number });
    // the same prompt ids as transformers' rendering: the response scored after them matches an ids line
    const direct = await run({
      model,
      input: input("ids2.jsonl", [{ prompt_ids: off.ids, response_ids: await responseIds(response) }]),
    });
    expect(thinkingOff!.logprob).toBe(direct[0]!["logprob"]);
    expect(plain!.logprob).not.toBe(thinkingOff!.logprob);
  });

  it("wants a JSON object", async () => {
    // commander reports a bad option value itself, on stderr
    const errors: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => errors.push(chunk)) as typeof process.stderr.write;
    try {
      const path = input("one.jsonl", [{ prompt: "Hi", response: " there" }]);
      const argv = ["node", "optune", "logprobs", "--model", model, "--input", path, "--chat-template-args", "enable_thinking=false"];
      expect(await main(argv)).toBe(1);
    } finally {
      process.stderr.write = write;
    }
    expect(errors.join("\n")).toMatch(/must be an object of template variables, e\.g\. \{"enable_thinking": false\}, got enable_thinking=false/);
  });

  it("refuses them for an input without messages lines, where they would do nothing", async () => {
    const path = input("ids-only.jsonl", [{ prompt_ids: off.ids, response_ids: [300] }]);
    await expect(run({ model, input: path, chatTemplateArgs: { enable_thinking: false } })).rejects.toThrow(
      /--chat-template-args applies to \{"messages", "response"\} lines, and .*ids-only\.jsonl has none/,
    );
  });
});

async function responseIds(text: string): Promise<number[]> {
  const { HfTokenizer } = await import("../src/tokenizer/index.js");
  const tok = await HfTokenizer.load(join(FIXTURES, "qwen3"));
  return Array.from(tok.encode(text, { addSpecialTokens: false }));
}

describe("optune logprobs errors", () => {
  const model = join(FIXTURES, "smollm");
  const ok = { prompt: "Hello", response: " world" };

  it.each([
    ["{oops", /:2: not valid JSON/],
    ["", /:2: empty line/],
    [{ prompt: "Hello" }, /:2: expected \{"prompt": text, "response": text\}/],
    [{ prompt: 3, response: "x" }, /:2: "prompt" must be a string/],
    [{ prompt_ids: [], response_ids: [1] }, /:2: "prompt_ids" must be a non-empty list of token ids/],
    [{ prompt_ids: [1], response_ids: [1.5] }, /:2: "response_ids" must be a list of token ids/],
    [{ prompt_ids: [1], response_ids: [5000] }, /:2: token id 5000 is outside the vocabulary of .*smollm \(330 tokens\)/],
    [{ prompt_ids: Array(120).fill(5), response_ids: Array(20).fill(5) }, /:2: 140 tokens, more than the 128 positions/],
    [{ messages: [{ role: "user" }], response: "x" }, /:2: "messages": messages\[0\]\.content must be a string/],
  ])("names the line: %j", async (bad, message) => {
    await expect(run({ model, input: input("bad.jsonl", [ok, bad]) })).rejects.toThrow(message);
  });

  it("runs through the CLI and reports errors with exit code 1", async () => {
    const path = input("cli.jsonl", [ok, { prompt_ids: [1, 2], response_ids: [3] }]);
    const written: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => written.push(chunk)) as typeof process.stdout.write;
    try {
      expect(await main(["node", "optune", "logprobs", "--model", model, "--input", path, "--per-token"])).toBe(0);
    } finally {
      process.stdout.write = write;
    }
    const out = written.join("").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(out).toHaveLength(2);
    expect(out[1]!["token_logprobs"]).toHaveLength(1);
    expect(out[1]!["logprob"]).toBe((out[1]!["token_logprobs"] as number[])[0]);

    const errors: string[] = [];
    const error = console.error;
    console.error = (msg: string) => errors.push(msg);
    try {
      expect(await main(["node", "optune", "logprobs", "--model", join(FIXTURES, "reward_gpt2"), "--input", path])).toBe(1);
    } finally {
      console.error = error;
    }
    expect(errors.join("\n")).toMatch(/reward_gpt2 is a reward model; logprobs needs a causal language model/);
  });
});
