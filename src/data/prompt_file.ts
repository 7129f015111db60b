// Prompt files: JSONL, one prompt per line, either plain text (default field "prompt") or a chat
// (default field "messages": [{"role", "content"}, ...]). Duplicates are dropped (first one kept) so that no prompt
// is both trained on and held out, and a seeded split holds out an evaluation set. Every error names the file and
// the line.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { type ChatMessage, checkMessages } from "../tokenizer/index.js";
import { Rng } from "../util/random.js";
import { stripBom } from "../util/text.js";

export interface PromptRecord {
  /** Where it came from, "file:line", for errors and logs. */
  origin: string;
  /** Exactly one of text and messages is set. */
  text?: string;
  messages?: ChatMessage[];
}

export interface PromptFileOptions {
  /** Field holding the prompt text. */
  promptField?: string;
  /** Field holding the chat messages. */
  messagesField?: string;
}

export interface SplitOptions {
  /** Fraction of the (deduplicated) prompts held out for evaluation, in [0, 1). */
  evalFraction?: number;
  /** Exact number held out; overrides evalFraction. */
  evalCount?: number;
  /** Seed of the split; the same seed and file give the same split. */
  seed?: number;
}

export interface PromptSplit {
  train: PromptRecord[];
  eval: PromptRecord[];
  /** Lines dropped as duplicates of an earlier line. */
  duplicates: number;
}

export const DEFAULT_PROMPT_FIELD = "prompt";
export const DEFAULT_MESSAGES_FIELD = "messages";

/** Parses JSONL text (`file` names it in errors); blank lines are skipped, duplicates dropped. */
export function parsePromptLines(
  text: string,
  file: string,
  options: PromptFileOptions = {},
): { records: PromptRecord[]; duplicates: number } {
  const promptField = options.promptField ?? DEFAULT_PROMPT_FIELD;
  const messagesField = options.messagesField ?? DEFAULT_MESSAGES_FIELD;
  const records: PromptRecord[] = [];
  const seen = new Set<string>();
  let duplicates = 0;
  const lines = stripBom(text).split("\n");
  lines.forEach((raw, i) => {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line.trim() === "") return;
    const origin = `${file}:${i + 1}`;
    const record = parseLine(line, origin, promptField, messagesField);
    // Text and chat prompts never collide: the key says which kind it is.
    const key = record.text !== undefined ? `t${record.text}` : `m${JSON.stringify(record.messages)}`;
    if (seen.has(key)) {
      duplicates++;
      return;
    }
    seen.add(key);
    records.push(record);
  });
  if (records.length === 0) {
    throw new Error(`${file} has no prompts; write one JSON object per line, e.g. {"${promptField}": "..."}`);
  }
  return { records, duplicates };
}

function parseLine(line: string, origin: string, promptField: string, messagesField: string): PromptRecord {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`${origin}: not valid JSON (${reason}); each line must be one JSON object`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${origin}: expected a JSON object, got ${Array.isArray(value) ? "an array" : JSON.stringify(value)}`);
  }
  const obj = value as Record<string, unknown>;
  const hasText = obj[promptField] !== undefined;
  const hasMessages = obj[messagesField] !== undefined;
  if (hasText && hasMessages) {
    throw new Error(`${origin}: has both "${promptField}" and "${messagesField}"; give one of them`);
  }
  if (hasText) {
    const text = obj[promptField];
    if (typeof text !== "string" || text === "") {
      throw new Error(`${origin}: "${promptField}" must be a non-empty string, got ${JSON.stringify(text)}`);
    }
    return { origin, text };
  }
  if (hasMessages) {
    const messages = checkMessages(obj[messagesField], `${origin}: "${messagesField}"`);
    return { origin, messages };
  }
  const keys = Object.keys(obj).map((k) => `"${k}"`).join(", ") || "none";
  throw new Error(
    `${origin}: no "${promptField}" (text) or "${messagesField}" (chat) field (fields present: ${keys}); ` +
      `set promptField/messagesField if your file names them differently`,
  );
}

/** Holds out a seeded random subset for evaluation; both parts keep the file's order. */
export function splitPrompts(records: readonly PromptRecord[], options: SplitOptions = {}): { train: PromptRecord[]; eval: PromptRecord[] } {
  const n = records.length;
  let nEval: number;
  if (options.evalCount !== undefined) {
    nEval = options.evalCount;
    if (!Number.isInteger(nEval) || nEval < 0) throw new Error(`evalCount must be an integer >= 0, got ${nEval}`);
  } else {
    const fraction = options.evalFraction ?? 0;
    if (!(fraction >= 0 && fraction < 1)) throw new Error(`evalFraction must be in [0, 1), got ${fraction}`);
    nEval = Math.round(fraction * n);
  }
  if (nEval >= n) {
    throw new Error(`cannot hold out ${nEval} of ${n} unique prompts for evaluation and still train; lower evalCount/evalFraction`);
  }
  const held = new Set(new Rng(options.seed ?? 0).sample([...Array(n).keys()], nEval));
  return {
    train: records.filter((_, i) => !held.has(i)),
    eval: records.filter((_, i) => held.has(i)),
  };
}

/** Reads, deduplicates and splits a prompt file. */
export function readPromptFile(path: string, options: PromptFileOptions & SplitOptions = {}): PromptSplit {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`cannot read prompt file ${file}: ${reason}`, { cause: err });
  }
  const { records, duplicates } = parsePromptLines(text, file, options);
  try {
    return { ...splitPrompts(records, options), duplicates };
  } catch (err) {
    throw new Error(`${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
