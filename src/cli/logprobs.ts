// `optune logprobs --model DIR --input FILE.jsonl`: the summed log-prob of each line's response given its prompt,
// one JSON line out per input line, in order. A line is {"prompt", "response"} text (tokenized with the model
// directory's tokenizer: the prompt with special tokens, the response without), {"messages", "response"} (the
// prompt through the chat template, with --chat-template-args as extra variables), or {"prompt_ids",
// "response_ids"} (used as given).

import { resolve } from "node:path";

import { Command } from "commander";

import { EngineModel, packBatch, readModelConfig, type SequenceInput } from "../engine/index.js";
import { HfTokenizer, templateOptions } from "../tokenizer/index.js";
import {
  encodePrompt,
  idList,
  positiveInt,
  promptOf,
  readJsonlObjects,
  templateArgs,
  type JsonlObject,
  type Prompt,
} from "./jsonl_input.js";

interface LogprobsOptions {
  model: string;
  adapter?: string;
  input: string;
  tokenizer?: string;
  perToken?: boolean;
  batchSize: number;
  chatTemplateArgs?: Record<string, unknown>;
}

/** A line: its prompt, and its response as text or token ids. */
interface Line {
  origin: string;
  prompt: Prompt;
  response: string | number[];
}

function parseLine({ origin, value: o }: JsonlObject): Line {
  if (o["prompt_ids"] !== undefined || o["response_ids"] !== undefined) {
    return {
      origin,
      prompt: { kind: "ids", prompt: idList(o["prompt_ids"], "prompt_ids", origin, 1) },
      response: idList(o["response_ids"], "response_ids", origin, 0),
    };
  }
  if (typeof o["response"] !== "string") {
    throw new Error(
      `${origin}: expected {"prompt": text, "response": text}, {"messages": [...], "response": text} or ` +
        `{"prompt_ids": [...], "response_ids": [...]}; "response" must be a string`,
    );
  }
  return { origin, prompt: promptOf(o, origin), response: o["response"] };
}

function encodeLine(line: Line, tokenizer: HfTokenizer | undefined): SequenceInput {
  const prompt = encodePrompt(line.prompt, tokenizer, line.origin);
  if (typeof line.response !== "string") return { prompt, response: line.response };
  if (tokenizer === undefined) throw new Error(`${line.origin}: text input needs a tokenizer`);
  try {
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
  const lines = readJsonlObjects(options.input, "a prompt and a response").map(parseLine);
  const modelDir = resolve(options.model);
  const needsTokenizer = lines.some((l) => l.prompt.kind !== "ids");
  if (options.chatTemplateArgs !== undefined && !lines.some((l) => l.prompt.kind === "chat")) {
    throw new Error(`--chat-template-args applies to {"messages", "response"} lines, and ${options.input} has none`);
  }
  await readModelConfig(modelDir); // a wrong --model is named as such, before the tokenizer is looked for there
  const tokenizer = needsTokenizer ? await HfTokenizer.load(options.tokenizer ?? modelDir, templateOptions(options)) : undefined;
  const model = await EngineModel.load(modelDir);
  try {
    if (model.config.rewardModel) throw new Error(`${modelDir} is a reward model; logprobs needs a causal language model`);
    if (options.adapter !== undefined) await model.loadLoraAdapter(resolve(options.adapter)); // applied, not merged
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
    .option("--adapter <dir>", "LoRA adapters in PEFT's format (adapter_config.json + adapter_model.safetensors)")
    .option("--per-token", "also print each response token's log-prob (token_logprobs)")
    .option("--batch-size <n>", "sequences per forward pass", positiveInt, 16)
    .option("--chat-template-args <json>", 'extra chat template variables, e.g. \'{"enable_thinking": false}\'', templateArgs)
    .action(async (options: LogprobsOptions) => {
      await runLogprobs(options, (line) => process.stdout.write(`${line}\n`));
    });
}
