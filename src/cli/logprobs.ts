// `optune logprobs --model DIR --input FILE.jsonl`: the summed log-prob of each line's response given its prompt,
// one JSON line out per input line, in order. A line is {"prompt", "response"} text (tokenized with the model
// directory's tokenizer: the prompt with special tokens, the response without), {"messages", "response"} (the
// prompt through the chat template, with --chat-template-args as extra variables), or {"prompt_ids",
// "response_ids"} (used as given).

import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { Command, InvalidArgumentError } from "commander";

import { EngineModel, packBatch, type SequenceInput } from "../engine/index.js";
import { ChatTemplateArgsSchema } from "../data/user_config.js";
import { checkMessages, HfTokenizer, templateOptions } from "../tokenizer/index.js";

interface LogprobsOptions {
  model: string;
  input: string;
  tokenizer?: string;
  perToken?: boolean;
  batchSize: number;
  chatTemplateArgs?: Record<string, unknown>;
}

// --chat-template-args: a JSON object of extra template variables (the run config's chatTemplateArgs schema).
function templateArgs(value: string): Record<string, unknown> {
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

type Line =
  | { kind: "text"; origin: string; prompt: string; response: string }
  | { kind: "chat"; origin: string; messages: ReturnType<typeof checkMessages>; response: string }
  | { kind: "ids"; origin: string; prompt: number[]; response: number[] };

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be a positive integer");
  return n;
}

function idList(value: unknown, field: string, origin: string, minLength: number): number[] {
  if (!Array.isArray(value) || value.length < minLength || !value.every((v) => Number.isInteger(v) && v >= 0)) {
    const what = minLength > 0 ? "a non-empty list" : "a list";
    throw new Error(`${origin}: "${field}" must be ${what} of token ids (integers >= 0)`);
  }
  return value as number[];
}

function parseLine(text: string, origin: string): Line {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${origin}: not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${origin}: expected a JSON object`);
  }
  const o = value as Record<string, unknown>;
  if (o["prompt_ids"] !== undefined || o["response_ids"] !== undefined) {
    return {
      kind: "ids",
      origin,
      prompt: idList(o["prompt_ids"], "prompt_ids", origin, 1),
      response: idList(o["response_ids"], "response_ids", origin, 0),
    };
  }
  if (typeof o["response"] !== "string") {
    throw new Error(
      `${origin}: expected {"prompt": text, "response": text}, {"messages": [...], "response": text} or ` +
        `{"prompt_ids": [...], "response_ids": [...]}; "response" must be a string`,
    );
  }
  if (o["messages"] !== undefined) {
    return { kind: "chat", origin, messages: checkMessages(o["messages"], `${origin}: "messages"`), response: o["response"] };
  }
  if (typeof o["prompt"] !== "string") throw new Error(`${origin}: "prompt" must be a string`);
  return { kind: "text", origin, prompt: o["prompt"], response: o["response"] };
}

function readLines(path: string): Line[] {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`cannot read input ${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const raw = text.split("\n");
  if (raw[raw.length - 1] === "") raw.pop();
  // Blank lines are errors, not skipped: output line i must answer input line i.
  return raw.map((line, i) => {
    const origin = `${file}:${i + 1}`;
    const body = line.endsWith("\r") ? line.slice(0, -1) : line;
    if (body.trim() === "") throw new Error(`${origin}: empty line; every line needs a prompt and a response`);
    return parseLine(body, origin);
  });
}

function encodeLine(line: Line, tokenizer: HfTokenizer | undefined): SequenceInput {
  if (line.kind === "ids") return { prompt: line.prompt, response: line.response };
  if (tokenizer === undefined) throw new Error(`${line.origin}: text input needs a tokenizer`);
  try {
    const prompt =
      line.kind === "chat" ? tokenizer.encodeChat(line.messages, { addGenerationPrompt: true }) : tokenizer.encode(line.prompt);
    return { prompt, response: tokenizer.encode(line.response, { addSpecialTokens: false }) };
  } catch (err) {
    throw new Error(`${line.origin}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function checkSequence(seq: SequenceInput, origin: string, model: EngineModel, dir: string): void {
  const { vocabSize, maxPositions } = model.config;
  if (seq.prompt.length === 0) throw new Error(`${origin}: the prompt encodes to no tokens; the model needs at least one`);
  for (const part of [seq.prompt, seq.response]) {
    for (let i = 0; i < part.length; i++) {
      const id = part[i] as number;
      if (id >= vocabSize) throw new Error(`${origin}: token id ${id} is outside the vocabulary of ${dir} (${vocabSize} tokens)`);
    }
  }
  const length = seq.prompt.length + seq.response.length;
  if (length > maxPositions) {
    throw new Error(`${origin}: ${length} tokens, more than the ${maxPositions} positions of ${dir}`);
  }
}

export async function runLogprobs(options: LogprobsOptions, write: (line: string) => void): Promise<void> {
  const lines = readLines(options.input);
  const modelDir = resolve(options.model);
  const needsTokenizer = lines.some((l) => l.kind !== "ids");
  if (options.chatTemplateArgs !== undefined && !lines.some((l) => l.kind === "chat")) {
    throw new Error(`--chat-template-args applies to {"messages", "response"} lines, and ${options.input} has none`);
  }
  const tokenizer = needsTokenizer ? await HfTokenizer.load(options.tokenizer ?? modelDir, templateOptions(options)) : undefined;
  const model = await EngineModel.load(modelDir);
  try {
    if (model.config.rewardModel) throw new Error(`${modelDir} is a reward model; logprobs needs a causal language model`);
    tokenizer?.checkFitsModel(model.config.vocabSize, modelDir);
    // Everything is encoded and checked before the first forward pass, so a bad line fails fast.
    const sequences = lines.map((line) => {
      const seq = encodeLine(line, tokenizer);
      checkSequence(seq, line.origin, model, modelDir);
      return seq;
    });
    for (let start = 0; start < sequences.length; start += options.batchSize) {
      const chunk = sequences.slice(start, start + options.batchSize);
      const result = await model.logprobs(packBatch(chunk));
      let at = 0;
      chunk.forEach((seq, i) => {
        const n = seq.response.length;
        const out: Record<string, unknown> = { logprob: result.seqLogps[i], n_tokens: n };
        if (options.perToken === true) out["token_logprobs"] = Array.from(result.tokenLogps.subarray(at, at + n));
        at += n;
        write(JSON.stringify(out));
      });
    }
  } finally {
    await model.dispose();
  }
}

export function logprobsCommand(): Command {
  return new Command("logprobs")
    .description("print the summed log-prob of each response given its prompt (one JSON line per input line)")
    .requiredOption("--model <dir>", "Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    .requiredOption("--input <file>", 'JSONL: {"prompt","response"}, {"messages","response"} or {"prompt_ids","response_ids"}')
    .option("--tokenizer <dir>", "tokenizer directory, when not the model directory")
    .option("--per-token", "also print each response token's log-prob (token_logprobs)")
    .option("--batch-size <n>", "sequences per forward pass", positiveInt, 16)
    .option("--chat-template-args <json>", 'extra chat template variables, e.g. \'{"enable_thinking": false}\'', templateArgs)
    .action(async (options: LogprobsOptions) => {
      await runLogprobs(options, (line) => process.stdout.write(`${line}\n`));
    });
}
