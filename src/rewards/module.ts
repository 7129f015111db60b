// A reward source backed by a user's JS module that exports `score(batch) => number[] | Promise<number[]>`.
// The module gets a plain, JSON-like view of the batch (texts, chat messages, ids as number arrays), the same
// shape the HTTP source posts, so a scorer can move between the two without changes.

import { existsSync } from "node:fs";
import { extname, resolve } from "node:path";
import { pathToFileURL } from "node:url";

import type { ChatMessage } from "../tokenizer/index.js";
import { checkRewardBatch, type RewardBatch, type RewardPrompt, type RewardSource } from "./source.js";

/** A RewardPrompt that also carries the chat messages it was rendered from (prompt files with `messages`). */
export interface ChatRewardPrompt extends RewardPrompt {
  messages?: readonly ChatMessage[];
}

/** What a module's score() and an HTTP endpoint receive; arrays are parallel, one entry per item. */
export interface PlainRewardBatch {
  /** Prompt text as the policy saw it (chat prompts: rendered with the policy's template). */
  prompts: string[];
  /** Response text without the end-of-sequence token. */
  responses: string[];
  /** The chat messages of each prompt, or null for a plain-text prompt. */
  messages: (ChatMessage[] | null)[];
  /** False where generation hit the length limit before the end-of-sequence token. */
  endedWithEos: boolean[];
  /** Policy token ids (only where asked for: they mean nothing to a scorer with another tokenizer). */
  promptIds?: number[][];
  responseIds?: number[][];
}

export function toPlainBatch(batch: RewardBatch, withIds: boolean): PlainRewardBatch {
  checkRewardBatch(batch);
  const prompts = batch.prompts as readonly ChatRewardPrompt[];
  const plain: PlainRewardBatch = {
    prompts: prompts.map((p) => p.text),
    responses: batch.responses.map((r) => r.text),
    messages: prompts.map((p) => (p.messages === undefined ? null : p.messages.map((m) => ({ ...m })))),
    endedWithEos: batch.responses.map((r) => r.endedWithEos),
  };
  if (withIds) {
    plain.promptIds = prompts.map((p) => Array.from(p.ids));
    plain.responseIds = batch.responses.map((r) => Array.from(r.ids));
  }
  return plain;
}

/** Throws unless `rewards` is an array of `n` finite numbers; `who` names the scorer in the message. */
export function checkRewards(rewards: unknown, n: number, who: string): number[] {
  if (!Array.isArray(rewards)) {
    throw new Error(`${who} returned ${describeValue(rewards)} instead of an array of ${n} numbers`);
  }
  if (rewards.length !== n) {
    throw new Error(`${who} returned ${rewards.length} rewards for ${n} responses; it must return one per response`);
  }
  rewards.forEach((r: unknown, i) => {
    if (typeof r !== "number" || !Number.isFinite(r)) {
      throw new Error(`${who} returned ${describeValue(r)} for item ${i}; every reward must be a finite number`);
    }
  });
  return rewards as number[];
}

function describeValue(v: unknown): string {
  if (typeof v === "number") return String(v);
  if (v === undefined) return "undefined";
  const json = JSON.stringify(v);
  return json === undefined ? typeof v : json.length > 60 ? `${json.slice(0, 60)}...` : json;
}

export type ScoreFunction = (batch: PlainRewardBatch) => number[] | Promise<number[]>;

export class ModuleRewardSource implements RewardSource {
  readonly name: string;

  constructor(
    private readonly fn: ScoreFunction,
    readonly path: string,
  ) {
    this.name = `reward module ${path}`;
  }

  /** Imports `path` (resolved against the working directory) and finds its score function. */
  static async load(path: string): Promise<ModuleRewardSource> {
    const file = resolve(path);
    if (!existsSync(file)) throw new Error(`reward module ${file} does not exist`);
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      const hint = [".ts", ".mts", ".cts"].includes(extname(file))
        ? " (Node 20 cannot import TypeScript directly: compile the module to .js/.mjs, or use Node >= 22.6 with type stripping)"
        : "";
      throw new Error(`cannot import reward module ${file}: ${reason}${hint}`, { cause: err });
    }
    return new ModuleRewardSource(findScore(mod, file), file);
  }

  async score(batch: RewardBatch): Promise<number[]> {
    const plain = toPlainBatch(batch, true);
    let rewards: unknown;
    try {
      rewards = await this.fn(plain);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new Error(`${this.name}: score() threw: ${reason}`, { cause: err });
    }
    return checkRewards(rewards, batch.responses.length, `${this.name}: score()`);
  }
}

/** `export function score`, or a default export that is the function or an object with one. */
function findScore(mod: Record<string, unknown>, file: string): ScoreFunction {
  if (typeof mod["score"] === "function") return mod["score"] as ScoreFunction;
  const fallback = mod["default"];
  if (typeof fallback === "function") return fallback as ScoreFunction;
  if (typeof fallback === "object" && fallback !== null) {
    const inner = (fallback as Record<string, unknown>)["score"];
    if (typeof inner === "function") return (inner as ScoreFunction).bind(fallback);
  }
  throw new Error(
    `reward module ${file} exports no score function; add \`export function score(batch) { ... }\` ` +
      `returning one number per response`,
  );
}
