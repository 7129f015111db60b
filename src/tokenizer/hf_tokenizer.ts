// A Hugging Face tokenizer directory: tokenizer.json (read by @huggingface/tokenizers, a pure-JS port of the Rust
// `tokenizers` pipeline), tokenizer_config.json (special tokens, decoding options, often the chat template),
// chat_template.jinja and generation_config.json (stop tokens). Ids follow tokenizer.json as the Rust `tokenizers`
// library does (the fixture corpus in test/fixtures/hf/tokenizer_cases.json checks them against transformers);
// README "Tokenizers" lists where transformers 5 or the JS libraries differ.

import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

import { Tokenizer } from "@huggingface/tokenizers";

import { type ChatMessage, ChatTemplate, type ChatTemplateArgs, findChatTemplate } from "./chat_template.js";
import { readStopTokens, type StopTokens } from "./generation_config.js";
import { readJsonObject, tokenText } from "./json_file.js";

export interface HfTokenizerOptions {
  /** A Jinja chat template that replaces the directory's own (or supplies one where it has none). */
  chatTemplate?: string;
  /** Extra variables for the chat template, e.g. {"enable_thinking": false} for Qwen3. */
  chatTemplateArgs?: ChatTemplateArgs;
}

/** The tokenizer options among `o`'s fields (undefined ones left out), for callers that carry them with others. */
export function templateOptions(o: {
  chatTemplate?: string | undefined;
  chatTemplateArgs?: ChatTemplateArgs | undefined;
}): HfTokenizerOptions {
  return {
    ...(o.chatTemplate === undefined ? {} : { chatTemplate: o.chatTemplate }),
    ...(o.chatTemplateArgs === undefined ? {} : { chatTemplateArgs: o.chatTemplateArgs }),
  };
}

/**
 * Files that make up a tokenizer, and a multimodal model's processor (a multimodal Gemma 3 saves as the whole
 * multimodal model: AutoProcessor needs its image preprocessor's settings); copied next to saved checkpoints so they
 * load as complete model dirs.
 */
const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
  "generation_config.json",
  "preprocessor_config.json",
  "processor_config.json",
];

// Special-token fields of tokenizer_config.json that transformers passes to chat templates by name.
const SPECIAL_TOKEN_FIELDS = ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"];

// The tokenizer models the JS library implements; for any other type it would guess one from the fields present.
const MODEL_TYPES = ["BPE", "WordPiece", "Unigram"];

function checkModelType(json: Record<string, unknown>, path: string): void {
  const type = (json["model"] as { type?: unknown } | undefined)?.type;
  if (typeof type !== "string" || !MODEL_TYPES.includes(type)) {
    throw new Error(
      `${path}: field "model.type" = ${JSON.stringify(type)}: unsupported tokenizer model; ` +
        `optune supports ${MODEL_TYPES.map((t) => `"${t}"`).join(", ")}`,
    );
  }
}

// Whether decoding removes spaces before punctuation, as transformers 5 decides: only when the config asks (the JS
// library would by default), and for a BPE model (Llama 3's config asks) only with the override flag, because there
// it deletes real spaces ("end ." would decode as "end.").
function cleansUpSpaces(config: Record<string, unknown>, json: Record<string, unknown>): boolean {
  if (config["clean_up_tokenization_spaces"] !== true) return false;
  const bpe = (json["model"] as { type?: unknown }).type === "BPE";
  return !bpe || config["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] === true;
}

export class HfTokenizer {
  /** One more than the largest token id, added tokens included. */
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** generate() stops after any of these (see generation_config.ts). */
  readonly stopTokens: StopTokens;
  /** Rows of the model checkFitsModel accepted this tokenizer for, when special tokens lie past them. */
  private modelRows: number | undefined;
  /** Those special tokens' texts (checkFitsModel). */
  private tokensBeyondModel: string[] = [];
  /** Undefined when the directory has none and no override was given. */
  readonly chatTemplate: ChatTemplate | undefined;

  private constructor(
    readonly dir: string,
    private readonly tokenizer: Tokenizer,
    config: Record<string, unknown>,
    options: HfTokenizerOptions,
    /** Ids of tokenizer.json's added tokens marked special. */
    private readonly specialIds: ReadonlySet<number>,
  ) {
    const configPath = join(dir, "tokenizer_config.json");
    let maxId = -1;
    for (const id of tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const specials: Record<string, string> = {};
    for (const field of SPECIAL_TOKEN_FIELDS) {
      const text = tokenText(config[field], field, configPath);
      if (text !== undefined) {
        if (tokenizer.token_to_id(text) === undefined) {
          throw new Error(`${configPath}: field "${field}" = ${JSON.stringify(text)} is not a token of ${join(dir, "tokenizer.json")}`);
        }
        specials[field] = text;
      }
    }
    this.bosToken = specials["bos_token"];
    this.eosToken = specials["eos_token"];
    const eosId = this.eosToken === undefined ? undefined : tokenizer.token_to_id(this.eosToken);
    this.stopTokens = readStopTokens(dir, eosId, this.vocabSize);

    const found =
      options.chatTemplate !== undefined
        ? { source: options.chatTemplate, origin: "the chatTemplate option" }
        : findChatTemplate(dir, config);
    if (found === undefined && options.chatTemplateArgs !== undefined && Object.keys(options.chatTemplateArgs).length > 0) {
      throw new Error(
        `${dir} has no chat template, so chatTemplateArgs (${Object.keys(options.chatTemplateArgs).join(", ")}) ` +
          `would be ignored; remove them, or supply a template (chatTemplate)`,
      );
    }
    this.chatTemplate = found && new ChatTemplate(found.source, found.origin, specials, options.chatTemplateArgs);
  }

  /** Loads `dir`; it needs tokenizer.json, the other files are optional. */
  static async load(dir: string, options: HfTokenizerOptions = {}): Promise<HfTokenizer> {
    const root = resolve(dir);
    const tokenizerPath = join(root, "tokenizer.json");
    if (!existsSync(tokenizerPath)) {
      throw new Error(
        `${root} has no tokenizer.json; optune needs the fast-tokenizer file (save the tokenizer with ` +
          `transformers' save_pretrained, or copy tokenizer.json from the model's Hub repository)`,
      );
    }
    const json = readJsonObject(tokenizerPath);
    checkModelType(json, tokenizerPath);
    const config = readJsonObject(join(root, "tokenizer_config.json"), true) ?? {};
    const libConfig = { ...config, clean_up_tokenization_spaces: cleansUpSpaces(config, json) };
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, libConfig);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new Error(`${tokenizerPath}: unsupported or malformed tokenizer (${reason})`, { cause: err });
    }
    const specialIds = new Set<number>();
    const added = json["added_tokens"];
    if (Array.isArray(added)) {
      for (const t of added as { id?: unknown; special?: unknown }[]) {
        if (t && t.special === true && typeof t.id === "number") specialIds.add(t.id);
      }
    }
    return new HfTokenizer(root, tokenizer, config, options, specialIds);
  }

  /** Token ids of `text`; addSpecialTokens (default true) applies the post-processor, e.g. a leading BOS. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): Int32Array {
    const encoding = this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true });
    const ids = Int32Array.from(encoding.ids);
    const rows = this.modelRows;
    if (rows !== undefined) {
      const id = ids.find((i) => i >= rows);
      if (id !== undefined) {
        throw new Error(
          `${this.dir}: the text ${JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}...` : text)} holds the ` +
            `special token ${JSON.stringify(this.tokenizer.id_to_token(id))} (id ${id}), which the model has no ` +
            `embedding for (vocab_size ${rows}); remove it from the text`,
        );
      }
    }
    return ids;
  }

  /** Text of `ids`; skipSpecialTokens (default true) leaves out special tokens such as EOS. */
  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    const list = Array.from(ids);
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`decode: ids[${i}] = ${id} is outside the vocabulary [0, ${this.vocabSize}) of ${this.dir}`);
      }
    });
    if (list.length === 0) return "";
    return this.tokenizer.decode(list, { skip_special_tokens: options.skipSpecialTokens ?? true });
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  /** The chat template's text for `messages`. */
  applyChatTemplate(messages: readonly ChatMessage[], options: { addGenerationPrompt: boolean }): string {
    return this.requireTemplate().render(messages, options);
  }

  /** Ids of a rendered conversation; the template writes any BOS itself, so no special tokens are added. */
  encodeChat(messages: readonly ChatMessage[], options: { addGenerationPrompt: boolean }): Int32Array {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }

  /**
   * `text` without the special tokens the model has no rows for (checkFitsModel), spelled out: for text the model
   * did not choose, such as a policy's response read by a reward model (a prompt or a template that writes one
   * still fails in encode()).
   */
  withoutTokensBeyondModel(text: string): string {
    let out = text;
    for (const token of this.tokensBeyondModel) out = out.split(token).join("");
    return out;
  }

  /**
   * Throws unless every id this tokenizer makes is a row of a model with `modelVocab` embeddings. Special added
   * tokens past the model's rows are let through (Gemma 3's tokenizer has <image_soft_token> at 262144, one past its
   * text models' embeddings): encode() then refuses a text that holds one.
   */
  checkFitsModel(modelVocab: number, modelDir: string): void {
    if (this.vocabSize <= modelVocab) return;
    const beyond: string[] = [];
    for (const [token, id] of this.tokenizer.get_vocab(true)) {
      if (id < modelVocab) continue;
      if (!this.specialIds.has(id)) {
        throw new Error(
          `the tokenizer in ${this.dir} has ${this.vocabSize} tokens but the model in ${modelDir} has only ` +
            `${modelVocab} embeddings (vocab_size; token ${JSON.stringify(token)} is id ${id}); they do not belong together`,
        );
      }
      beyond.push(token);
    }
    this.modelRows = modelVocab;
    this.tokensBeyondModel = beyond;
  }

  /** Copies the tokenizer files that exist into `dstDir` (created if needed). */
  copyFilesTo(dstDir: string): void {
    mkdirSync(dstDir, { recursive: true });
    for (const name of TOKENIZER_FILES) {
      const src = join(this.dir, name);
      if (existsSync(src)) copyFileSync(src, join(dstDir, name));
    }
  }

  private requireTemplate(): ChatTemplate {
    if (this.chatTemplate === undefined) {
      throw new Error(
        `${this.dir} has no chat template (neither chat_template.jinja nor "chat_template" in tokenizer_config.json); ` +
          `give prompts as plain text, or supply a template (chatTemplate option)`,
      );
    }
    return this.chatTemplate;
  }
}
