// The built-in task's character tokenizer (tokenizer.ts) as Hugging Face tokenizer files, written next to every
// checkpoint of a built-in run, so that a checkpoint is a complete model directory: `optune generate` and
// `optune logprobs` read it like any other, and transformers' AutoTokenizer loads it.
//
// tokenizer.json: a BPE model with no merges over the 47 tokens (every character its own token), a pre-tokenizer
// that isolates each character, a template that puts <bos> first, and a decoder that joins the characters (Fuse).
// The chat template renders the task's prompt format, <bos> text '=': one user message is the prompt text, and the
// generation prompt is the '=' after it. generation_config.json names <eos>, which ends every response.

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { BOS_ID, EOS_ID, PAD_ID, PROMPT_END, VOCAB } from "./tokenizer.js";

const SPECIAL_IDS = [PAD_ID, BOS_ID, EOS_ID];

function tokenizerJson(): unknown {
  const bos = VOCAB[BOS_ID] as string;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_IDS.map((id) => ({
      id,
      content: VOCAB[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: "Split", pattern: { Regex: "." }, behavior: "Isolated", invert: false },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [BOS_ID], tokens: [bos] } },
    },
    decoder: { type: "Fuse" },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(VOCAB.map((token, id) => [token, id])),
      merges: [],
    },
  };
}

/** The chat template: the messages' contents after <bos>, then '=' as the generation prompt. */
export const BUILTIN_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}" +
  `{% if add_generation_prompt %}${PROMPT_END}{% endif %}`;

/** Writes tokenizer.json, tokenizer_config.json and generation_config.json into `dir` (which exists). */
export function writeBuiltinTokenizerFiles(dir: string, maxPositions: number): void {
  const write = (name: string, value: unknown) => writeFileSync(join(dir, name), `${JSON.stringify(value, null, 2)}\n`);
  write("tokenizer.json", tokenizerJson());
  write("tokenizer_config.json", {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: VOCAB[BOS_ID],
    eos_token: VOCAB[EOS_ID],
    pad_token: VOCAB[PAD_ID],
    model_max_length: maxPositions,
    chat_template: BUILTIN_CHAT_TEMPLATE,
  });
  write("generation_config.json", { bos_token_id: BOS_ID, eos_token_id: EOS_ID, pad_token_id: PAD_ID });
}
