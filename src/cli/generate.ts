// `optune generate --model DIR (--input FILE.jsonl | --prompt TEXT)`: responses sampled from a model (a tuned
// checkpoint, say), one JSON line out per prompt, in order. A line is {"prompt"} text, {"messages"} (through the
// chat template with its generation prompt) or {"prompt_ids"} (jsonl_input.ts). Sampling is the engine's: K samples
// per prompt, temperature (0 = greedy), top-k, top-p; a response ends at one of the tokenizer's stop tokens (kept in
// token_ids, left out of text) or after --max-new-tokens. A response's logprob (and with --per-token each token's)
// is under the model at temperature 1 over the whole vocabulary, as `optune logprobs` gives. Line i draws from
// random stream i of --seed, so a line's tokens do not depend on --batch-size (its log-probs only to rounding: other
// batch shapes sum in other orders).

import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

import { Command, InvalidArgumentError } from "commander";

import {
  DEFAULT_SAMPLING,
  EngineModel,
  readModelConfig,
  type DeviceName,
  type PrecisionName,
} from "../engine/index.js";
import { HfTokenizer, templateOptions } from "../tokenizer/index.js";
import { encodePrompt, positiveInt, promptOf, readJsonlObjects, templateArgs, type Prompt } from "./jsonl_input.js";

export interface GenerateOptions {
  model: string;
  adapter?: string;
  input?: string;
  prompt?: string;
  chat?: boolean;
  tokenizer?: string;
  samples: number;
  /** Absent: DEFAULT_SAMPLING's, or fewer where the model's positions leave less room after the longest prompt. */
  maxNewTokens?: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  device?: DeviceName;
  precision?: PrecisionName;
  batchSize: number;
  perToken?: boolean;
  chatTemplateArgs?: Record<string, unknown>;
}

interface Line {
  origin: string;
  prompt: Prompt;
}

function number(min: number, max: number, what: string, integer = false) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === "" || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new InvalidArgumentError(`must be ${what}`);
    }
    return n;
  };
}

const integer = number(0, Number.MAX_SAFE_INTEGER, "an integer >= 0", true);
const topP = number(Number.MIN_VALUE, 1, "a number in (0, 1]");

function choice<T extends string>(values: readonly T[]) {
  return (value: string): T => {
    if (!(values as readonly string[]).includes(value)) {
      throw new InvalidArgumentError(`must be one of ${values.map((v) => `'${v}'`).join(", ")}`);
    }
    return value as T;
  };
}

function readPrompts(options: GenerateOptions): Line[] {
  if ((options.input === undefined) === (options.prompt === undefined)) {
    throw new Error("give either --input FILE.jsonl or --prompt TEXT");
  }
  if (options.prompt !== undefined) {
    const prompt: Prompt = options.chat
      ? { kind: "chat", messages: [{ role: "user", content: options.prompt }] }
      : { kind: "text", prompt: options.prompt };
    return [{ origin: "--prompt", prompt }];
  }
  if (options.chat) throw new Error('--chat applies to --prompt; in --input, give chats as {"messages": [...]} lines');
  return readJsonlObjects(options.input as string, "a prompt").map(({ origin, value }) => ({
    origin,
    prompt: promptOf(value, origin),
  }));
}

export async function runGenerate(options: GenerateOptions, write: (line: string) => void): Promise<void> {
  const lines = readPrompts(options);
  const modelDir = resolve(options.model);
  if (options.chatTemplateArgs !== undefined && !lines.some((l) => l.prompt.kind === "chat")) {
    throw new Error(
      '--chat-template-args applies to chats ({"messages"} lines, or --prompt with --chat), and there are none',
    );
  }
  await readModelConfig(modelDir); // a wrong --model is named as such, before the tokenizer is looked for there
  // Token-id prompts need no tokenizer; one that is there still gives the stop tokens and the texts.
  const tokenizerDir = resolve(options.tokenizer ?? modelDir);
  const needsTokenizer = lines.some((l) => l.prompt.kind !== "ids");
  const tokenizer =
    needsTokenizer || existsSync(join(tokenizerDir, "tokenizer.json"))
      ? await HfTokenizer.load(tokenizerDir, templateOptions(options))
      : undefined;
  const placement = {
    ...(options.device === undefined ? {} : { device: options.device }),
    ...(options.precision === undefined ? {} : { precision: options.precision }),
  };
  const model = await EngineModel.load(modelDir, placement);
  try {
    const { vocabSize, maxPositions, rewardModel } = model.config;
    if (rewardModel) throw new Error(`${modelDir} is a reward model; generate needs a causal language model`);
    // PEFT's (or a LoRA run's checkpoint/adapter/) adapters on the model's weights, applied as they are (not merged)
    if (options.adapter !== undefined) await model.loadLoraAdapter(resolve(options.adapter));
    tokenizer?.checkFitsModel(vocabSize, modelDir);
    if (options.maxNewTokens !== undefined && options.maxNewTokens >= maxPositions) {
      throw new Error(
        `--max-new-tokens ${options.maxNewTokens} leaves no room for a prompt in the ${maxPositions} positions of ${modelDir}`,
      );
    }
    // Every prompt is encoded and checked before the first sampling call, so a bad line fails fast.
    const encoded = lines.map((line) => encodePrompt(line.prompt, tokenizer, line.origin));
    const longest = Math.max(...encoded.map((ids) => ids.length));
    const maxNew = options.maxNewTokens ?? Math.max(1, Math.min(DEFAULT_SAMPLING.maxNewTokens, maxPositions - longest));
    const prompts = lines.map((line, i) => {
      const ids = encoded[i] as number[];
      if (ids.length === 0) {
        throw new Error(`${line.origin}: the prompt encodes to no tokens; the model needs at least one`);
      }
      const outside = ids.find((id) => id >= vocabSize);
      if (outside !== undefined) {
        throw new Error(`${line.origin}: token id ${outside} is outside the vocabulary of ${modelDir} (${vocabSize} tokens)`);
      }
      if (options.maxNewTokens === undefined && ids.length >= maxPositions) {
        throw new Error(
          `${line.origin}: the prompt's ${ids.length} tokens fill the ${maxPositions} positions of ${modelDir}, ` +
            `leaving none for a response; shorten the prompt`,
        );
      }
      if (ids.length + maxNew > maxPositions) {
        throw new Error(
          `${line.origin}: the prompt's ${ids.length} tokens and --max-new-tokens ${maxNew} exceed the ` +
            `${maxPositions} positions of ${modelDir}; shorten the prompt or lower --max-new-tokens`,
        );
      }
      return ids;
    });
    const stop = new Set<number>(tokenizer?.stopTokens.ids ?? []);
    for (let start = 0; start < prompts.length; start += options.batchSize) {
      const chunk = prompts.slice(start, start + options.batchSize);
      const result = await model.sample({
        prompts: chunk,
        nSamples: options.samples,
        maxNewTokens: maxNew,
        temperature: options.temperature,
        topK: options.topK,
        topP: options.topP,
        stopTokens: [...stop],
        seed: options.seed,
        streamIds: chunk.map((_, i) => start + i),
        // a model whose vocabulary is padded past its tokenizer's (Qwen2) never draws the padding ids
        ...(tokenizer !== undefined && tokenizer.vocabSize < vocabSize ? { vocabLimit: tokenizer.vocabSize } : {}),
      });
      for (let p = 0; p < chunk.length; p++) {
        const responses = [];
        for (let k = 0; k < options.samples; k++) {
          const r = p * options.samples + k;
          const from = result.offsets[r] as number, to = result.offsets[r + 1] as number;
          const ids = Array.from(result.tokens.subarray(from, to));
          let logprob = 0;
          for (let t = from; t < to; t++) logprob += result.tokenLogps[t] as number;
          const finished = result.finished[r] === 1;
          const out: Record<string, unknown> = {};
          if (tokenizer !== undefined) out["text"] = tokenizer.decode(finished ? ids.slice(0, -1) : ids);
          Object.assign(out, { token_ids: ids, logprob, n_tokens: ids.length, finished });
          if (options.perToken === true) out["token_logprobs"] = Array.from(result.tokenLogps.subarray(from, to));
          responses.push(out);
        }
        write(JSON.stringify({ responses }));
      }
    }
  } finally {
    await model.dispose();
  }
}

export function generateCommand(): Command {
  return new Command("generate")
    .description("sample responses from a model (one JSON line per prompt): a tuned checkpoint's answers, say")
    .requiredOption("--model <dir>", "Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    .option("--input <file>", 'JSONL, one prompt per line: {"prompt"}, {"messages"} or {"prompt_ids"}')
    .option("--prompt <text>", "one prompt, instead of --input")
    .option("--chat", "with --prompt: send it as a user message through the chat template")
    .option("--adapter <dir>", "LoRA adapters in PEFT's format (adapter_config.json + adapter_model.safetensors)")
    .option("--tokenizer <dir>", "tokenizer directory, when not the model directory")
    .option("--samples <n>", "responses per prompt", positiveInt, DEFAULT_SAMPLING.nSamples)
    .option(
      "--max-new-tokens <n>",
      `most tokens per response (default: ${DEFAULT_SAMPLING.maxNewTokens}, or what the model's positions leave after the longest prompt)`,
      positiveInt,
    )
    .option("--temperature <t>", "0 = greedy", number(0, 100, "a number in [0, 100]"), DEFAULT_SAMPLING.temperature)
    .option("--top-k <k>", "draw from the k likeliest tokens (0 = off)", integer, DEFAULT_SAMPLING.topK)
    .option("--top-p <p>", "draw from the nucleus of mass p (1 = off)", topP, DEFAULT_SAMPLING.topP)
    .option("--seed <n>", "random seed (line i draws from stream i)", integer, 0)
    .option("--device <name>", "cpu | cuda | auto", choice(["cpu", "cuda", "auto"] as const))
    .option("--precision <p>", "fp32 | bf16", choice(["fp32", "bf16"] as const))
    .option("--batch-size <n>", "prompts per sampling call", positiveInt, 16)
    .option("--per-token", "also print each token's log-prob (token_logprobs)")
    .option("--chat-template-args <json>", "extra chat template variables, e.g. '{\"enable_thinking\": false}'", templateArgs)
    .action(async (options: GenerateOptions) => {
      await runGenerate(options, (line) => process.stdout.write(`${line}\n`));
    });
}
