// End-of-sequence and stop tokens of a model directory. transformers' generate() stops on every id in
// generation_config.json's eos_token_id (an id or a list: chat models often list both <|im_end|> and
// <|endoftext|>); without that file, the tokenizer's eos_token and then config.json's eos_token_id are used.

import { join } from "node:path";

import { readJsonObject } from "./json_file.js";

export interface StopTokens {
  ids: number[];
  /** Which file and field the ids came from, for logs and errors. */
  origin: string;
}

/** An id or a list of ids from a JSON field; undefined when absent or null. */
function idList(value: unknown, field: string, path: string): number[] | undefined {
  if (value === undefined || value === null) return undefined;
  const list = Array.isArray(value) ? value : [value];
  for (const id of list) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new Error(`${path}: field "${field}" = ${JSON.stringify(value)}: expected a token id or a list of token ids`);
    }
  }
  return list as number[];
}

/**
 * The stop tokens of `dir`. `eosTokenId` is the tokenizer's eos_token as an id (undefined when it has none);
 * `vocabSize` bounds every id.
 */
export function readStopTokens(dir: string, eosTokenId: number | undefined, vocabSize: number): StopTokens {
  const generationPath = join(dir, "generation_config.json");
  const configPath = join(dir, "config.json");
  let found: StopTokens | undefined;
  const generation = readJsonObject(generationPath, true);
  const fromGeneration = generation && idList(generation["eos_token_id"], "eos_token_id", generationPath);
  if (fromGeneration !== undefined && fromGeneration.length > 0) {
    found = { ids: fromGeneration, origin: `${generationPath} (eos_token_id)` };
  } else if (eosTokenId !== undefined) {
    found = { ids: [eosTokenId], origin: `${join(dir, "tokenizer_config.json")} (eos_token)` };
  } else {
    const config = readJsonObject(configPath, true);
    const fromConfig = config && idList(config["eos_token_id"], "eos_token_id", configPath);
    if (fromConfig !== undefined && fromConfig.length > 0) found = { ids: fromConfig, origin: `${configPath} (eos_token_id)` };
  }
  if (found === undefined) return { ids: [], origin: "none" };
  for (const id of found.ids) {
    if (id >= vocabSize) {
      throw new Error(`${found.origin}: stop token id ${id} is outside the tokenizer's vocabulary of ${vocabSize} tokens`);
    }
  }
  return { ids: [...new Set(found.ids)], origin: found.origin };
}
