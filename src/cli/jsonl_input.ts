// The JSONL inputs of `optune logprobs` and `optune generate`: one JSON object per line, whose prompt is text
// ({"prompt"}: tokenized with special tokens), a chat ({"messages"}: through the chat template, with its generation
// prompt) or token ids ({"prompt_ids"}: used as given). Errors name the file and line; output line i answers input
// line i, so a blank line is an error, not skipped.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { InvalidArgumentError } from "commander";

import { ChatTemplateArgsSchema } from "../data/user_config.js";
import { checkMessages, type HfTokenizer } from "../tokenizer/index.js";

/** A line's JSON object and where it came from ("file:line"). */
export interface JsonlObject {
  origin: string;
  value: Record<string, unknown>;
}

export type Prompt =
  | { kind: "text"; prompt: string }
  | { kind: "chat"; messages: ReturnType<typeof checkMessages> }
  | { kind: "ids"; prompt: number[] };

/** --chat-template-args: a JSON object of extra template variables (the run config's chatTemplateArgs schema). */
export function templateArgs(value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    parsed = value;
  }
  const checked = ChatTemplateArgsSchema.safeParse(parsed);
  if (!checked.success) throw new InvalidArgumentError(`${checked.error.issues[0]?.message ?? "invalid"}, got ${value}`);
  return checked.data;
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be a positive integer");
  return n;
}

export function idList(value: unknown, field: string, origin: string, minLength: number): number[] {
  if (!Array.isArray(value) || value.length < minLength || !value.every((v) => Number.isInteger(v) && v >= 0)) {
    const what = minLength > 0 ? "a non-empty list" : "a list";
    throw new Error(`${origin}: "${field}" must be ${what} of token ids (integers >= 0)`);
  }
  return value as number[];
}

/** Every line of `path` as a JSON object; `needs` says what a line must hold (for the empty-line error). */
export function readJsonlObjects(path: string, needs: string): JsonlObject[] {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`cannot read input ${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const raw = text.split("\n");
  if (raw[raw.length - 1] === "") raw.pop();
  return raw.map((line, i) => {
    const origin = `${file}:${i + 1}`;
    const body = line.endsWith("\r") ? line.slice(0, -1) : line;
    if (body.trim() === "") throw new Error(`${origin}: empty line; every line needs ${needs}`);
    let value: unknown;
    try {
      value = JSON.parse(body);
    } catch (err) {
      throw new Error(`${origin}: not valid JSON (${err instanceof Error ? err.message : String(err)})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new Error(`${origin}: expected a JSON object`);
    }
    return { origin, value: value as Record<string, unknown> };
  });
}

/** The prompt of a line: "prompt_ids", else "messages", else "prompt" (which must then be a string). */
export function promptOf(o: Record<string, unknown>, origin: string): Prompt {
  if (o["prompt_ids"] !== undefined) return { kind: "ids", prompt: idList(o["prompt_ids"], "prompt_ids", origin, 1) };
  if (o["messages"] !== undefined) return { kind: "chat", messages: checkMessages(o["messages"], `${origin}: "messages"`) };
  if (typeof o["prompt"] !== "string") throw new Error(`${origin}: "prompt" must be a string`);
  return { kind: "text", prompt: o["prompt"] };
}

/** The prompt's token ids (text and chat through `tokenizer`). */
export function encodePrompt(p: Prompt, tokenizer: HfTokenizer | undefined, origin: string): number[] {
  if (p.kind === "ids") return p.prompt;
  if (tokenizer === undefined) throw new Error(`${origin}: text input needs a tokenizer`);
  try {
    return Array.from(
      p.kind === "chat" ? tokenizer.encodeChat(p.messages, { addGenerationPrompt: true }) : tokenizer.encode(p.prompt),
    );
  } catch (err) {
    throw new Error(`${origin}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
