// Turning prompt records into what the policy generates from: token ids from the policy's own tokenizer (chat
// prompts through its chat template, with the assistant turn opened), plus the text and messages that reward
// sources see.

import type { ChatRewardPrompt } from "../rewards/module.js";
import type { HfTokenizer } from "../tokenizer/index.js";
import type { PromptRecord } from "./prompt_file.js";

export interface EncodePromptOptions {
  /** Wrap plain-text prompts as one user turn of the chat template (instruct models). */
  textAsChat?: boolean;
  /** The policy's positions; a prompt must leave room for at least `minNewTokens` generated tokens. */
  maxPositions: number;
  minNewTokens?: number;
}

export function encodePrompt(record: PromptRecord, tokenizer: HfTokenizer, options: EncodePromptOptions): ChatRewardPrompt {
  const messages =
    record.messages ?? (options.textAsChat === true ? [{ role: "user", content: record.text as string }] : undefined);
  let text: string;
  let ids: Int32Array;
  try {
    if (messages !== undefined) {
      text = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
      ids = tokenizer.encode(text, { addSpecialTokens: false });
    } else {
      text = record.text as string;
      ids = tokenizer.encode(text);
    }
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`${record.origin}: ${reason}`, { cause: err });
  }
  if (ids.length === 0) throw new Error(`${record.origin}: the prompt encodes to no tokens`);
  const room = options.minNewTokens ?? 1;
  if (ids.length + room > options.maxPositions) {
    throw new Error(
      `${record.origin}: the prompt is ${ids.length} tokens; with ${room} new tokens that exceeds the model's ` +
        `${options.maxPositions} positions (max_position_embeddings); shorten it or lower sampling.maxNewTokens`,
    );
  }
  return messages === undefined ? { text, ids } : { text, ids, messages };
}
