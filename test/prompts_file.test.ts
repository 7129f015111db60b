// Prompt files: text and chat lines, configurable field names, deduplication, the seeded eval split, errors that
// name the file and line, and encoding with a model directory's tokenizer.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { encodePrompt, parsePromptLines, readPromptFile, splitPrompts } from "../src/data/index.js";
import { HfTokenizer } from "../src/tokenizer/index.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
const dir = mkdtempSync(join(tmpdir(), "optune-prompts-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, lines: string[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.join("\n"));
  return path;
}

const chat = (content: string) => JSON.stringify({ messages: [{ role: "user", content }] });

describe("parsing", () => {
  it("reads text and chat prompts, skips blank lines and drops duplicates", () => {
    const { records, duplicates } = parsePromptLines(
      [
        JSON.stringify({ prompt: "a", id: 1 }),
        "",
        chat("b"),
        JSON.stringify({ prompt: "a", id: 2 }),
        "   ",
        chat("b"),
        JSON.stringify({ prompt: "b" }),
        JSON.stringify({ messages: [{ role: "system", content: "s" }, { role: "user", content: "b" }] }) + "\r",
      ].join("\n"),
      "p.jsonl",
    );
    expect(duplicates).toBe(2);
    expect(records).toEqual([
      { origin: "p.jsonl:1", text: "a" },
      { origin: "p.jsonl:3", messages: [{ role: "user", content: "b" }] },
      { origin: "p.jsonl:7", text: "b" },
      { origin: "p.jsonl:8", messages: [{ role: "system", content: "s" }, { role: "user", content: "b" }] },
    ]);
  });

  it("uses configured field names", () => {
    const { records } = parsePromptLines(
      [JSON.stringify({ question: "q1" }), JSON.stringify({ conversation: [{ role: "user", content: "c" }] })].join("\n"),
      "f",
      { promptField: "question", messagesField: "conversation" },
    );
    expect(records.map((r) => r.text ?? r.messages?.[0]?.content)).toEqual(["q1", "c"]);
  });

  it.each([
    ["{not json", /f:2: not valid JSON .*one JSON object/],
    ["[1, 2]", /f:2: expected a JSON object, got an array/],
    [JSON.stringify({ text: "x", id: 3 }), /f:2: no "prompt" \(text\) or "messages" \(chat\) field \(fields present: "text", "id"\); set promptField/],
    [JSON.stringify({ prompt: "" }), /f:2: "prompt" must be a non-empty string, got ""/],
    [JSON.stringify({ prompt: 5 }), /f:2: "prompt" must be a non-empty string, got 5/],
    [JSON.stringify({ prompt: "x", messages: [] }), /f:2: has both "prompt" and "messages"/],
    [JSON.stringify({ messages: [] }), /f:2: "messages": messages must be a non-empty list/],
    [JSON.stringify({ messages: [{ role: "user" }] }), /f:2: "messages": messages\[0\]\.content must be a string, got undefined/],
    [JSON.stringify({ messages: [{ role: "", content: "x" }] }), /f:2: "messages": messages\[0\]\.role must be a non-empty string/],
  ])("names the file and line of a bad line: %s", (bad, message) => {
    expect(() => parsePromptLines([JSON.stringify({ prompt: "ok" }), bad].join("\n"), "f")).toThrow(message);
  });

  it("rejects a file without prompts", () => {
    expect(() => parsePromptLines("\n\n", "empty.jsonl")).toThrow(/empty\.jsonl has no prompts/);
  });
});

describe("eval split", () => {
  const records = Array.from({ length: 50 }, (_, i) => ({ origin: `f:${i + 1}`, text: `p${i}` }));

  it("is seeded, disjoint, complete and in file order", () => {
    const a = splitPrompts(records, { evalFraction: 0.2, seed: 7 });
    const b = splitPrompts(records, { evalFraction: 0.2, seed: 7 });
    const c = splitPrompts(records, { evalFraction: 0.2, seed: 8 });
    expect(a).toEqual(b);
    expect(a.eval).toHaveLength(10);
    expect(a.train).toHaveLength(40);
    expect(a.eval.map((r) => r.text)).not.toEqual(c.eval.map((r) => r.text));
    const all = [...a.train, ...a.eval].map((r) => r.text).sort();
    expect(all).toEqual(records.map((r) => r.text).sort());
    const lines = a.eval.map((r) => Number(r.origin.split(":")[1]));
    expect(lines).toEqual([...lines].sort((x, y) => x - y));
  });

  it("takes an exact count, and refuses to hold out everything", () => {
    expect(splitPrompts(records, { evalCount: 3 }).eval).toHaveLength(3);
    expect(splitPrompts(records).eval).toHaveLength(0);
    expect(() => splitPrompts(records, { evalCount: 50 })).toThrow(/cannot hold out 50 of 50 unique prompts/);
    expect(() => splitPrompts(records, { evalFraction: 1 })).toThrow(/evalFraction must be in \[0, 1\)/);
  });

  it("holds out unique prompts only", () => {
    const path = file("dups.jsonl", ["a", "b", "a", "c", "b", "d"].map((p) => JSON.stringify({ prompt: p })));
    const split = readPromptFile(path, { evalCount: 1, seed: 3 });
    expect(split.duplicates).toBe(2);
    expect([...split.train, ...split.eval].map((r) => r.text).sort()).toEqual(["a", "b", "c", "d"]);
  });

  it("reads a file that starts with a byte-order mark, and names the file when it cannot split it", () => {
    const path = file("bom.jsonl", ["\uFEFF" + JSON.stringify({ prompt: "first" }), JSON.stringify({ prompt: "second" })]);
    expect(readPromptFile(path, { evalCount: 1 }).train).toHaveLength(1);
    expect(() => readPromptFile(path, { evalCount: 2 })).toThrow(`${path}: cannot hold out 2 of 2 unique prompts`);
  });

  it("names a file it cannot read", () => {
    expect(() => readPromptFile(join(dir, "nope.jsonl"))).toThrow(/cannot read prompt file .*nope\.jsonl/);
  });
});

describe("encoding with a model's tokenizer", () => {
  it("encodes text as is and chats through the template, opening the assistant turn", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "smollm"));
    const text = encodePrompt({ origin: "f:1", text: "Hello world" }, tok, { maxPositions: 128 });
    expect(text).toEqual({ text: "Hello world", ids: tok.encode("Hello world") });
    const messages = [{ role: "user", content: "Hi" }];
    const rendered = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
    expect(rendered.endsWith("<|im_start|>assistant\n")).toBe(true);
    const chatPrompt = encodePrompt({ origin: "f:2", messages }, tok, { maxPositions: 128 });
    expect(chatPrompt).toEqual({ text: rendered, ids: tok.encodeChat(messages, { addGenerationPrompt: true }), messages });
    const wrapped = encodePrompt({ origin: "f:3", text: "Hi" }, tok, { maxPositions: 128, textAsChat: true });
    expect(wrapped).toEqual(chatPrompt);
  });

  it("names the line of a prompt that is too long or cannot be rendered", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "reward_llama"));
    expect(() => encodePrompt({ origin: "f:4", text: "word ".repeat(100) }, tok, { maxPositions: 128, minNewTokens: 64 })).toThrow(
      /f:4: the prompt is \d+ tokens; with 64 new tokens that exceeds the model's 128 positions/,
    );
    expect(() => encodePrompt({ origin: "f:5", messages: [{ role: "tool", content: "x" }] }, tok, { maxPositions: 128 })).toThrow(
      /f:5: chat template .* unsupported role tool/,
    );
    const plain = await HfTokenizer.load(join(FIXTURES, "reward_gpt2"));
    expect(() => encodePrompt({ origin: "f:6", messages: [{ role: "user", content: "x" }] }, plain, { maxPositions: 128 })).toThrow(
      /f:6: .*has no chat template/,
    );
  });
});
