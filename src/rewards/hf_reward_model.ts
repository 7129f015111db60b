// A reward model from a Hugging Face *ForSequenceClassification directory (Llama, Qwen2, Qwen3, Gemma 3, SmolLM3,
// OLMo 2, Mistral or GPT-2, one label; the score head comes from the checkpoint). It reads text, never the policy's
// ids: each (prompt, response) is rebuilt as a conversation and rendered with the reward model's OWN chat template
// and tokenizer, because its vocabulary generally differs from the policy's. Without a chat template, prompt text +
// response text is scored.

import { type DeviceOptions, EngineModel } from "../engine/index.js";
import { type ChatMessage, type ChatTemplateArgs, HfTokenizer, templateOptions } from "../tokenizer/index.js";
import type { ChatRewardPrompt } from "./module.js";
import { scoreInChunks } from "./reward_model.js";
import { checkRewardBatch, type RewardBatch, type RewardResponse, type RewardSource } from "./source.js";

export interface HfRewardModelOptions {
  /** Where tokenizer.json etc. live, when not next to the weights. */
  tokenizerDir?: string;
  /** Replaces (or supplies) the reward model's chat template. */
  chatTemplate?: string;
  /** Extra variables for its chat template ({"enable_thinking": false}, ...). */
  chatTemplateArgs?: ChatTemplateArgs;
  /** Sequences per engine call; bounds the activation memory of one call. */
  chunkSize?: number;
  /** Where the reward model runs (with the policy: one device, one memory plan); the CPU when absent. */
  placement?: DeviceOptions;
}

const DEFAULT_CHUNK = 64;

export class HfRewardModelSource implements RewardSource {
  readonly name: string;
  private readonly chunkSize: number;

  private constructor(
    private readonly model: EngineModel,
    readonly tokenizer: HfTokenizer,
    readonly dir: string,
    chunkSize: number,
  ) {
    this.name = `reward model ${dir}`;
    this.chunkSize = chunkSize;
  }

  static async load(dir: string, options: HfRewardModelOptions = {}): Promise<HfRewardModelSource> {
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    if (!Number.isInteger(chunkSize) || chunkSize < 1) {
      throw new Error(`reward model ${dir}: chunkSize must be a positive integer, got ${chunkSize}`);
    }
    const tokenizer = await HfTokenizer.load(options.tokenizerDir ?? dir, templateOptions(options));
    const model = await EngineModel.load(dir, options.placement);
    try {
      if (!model.config.rewardModel) {
        throw new Error(
          `${dir} is a causal language model, not a reward model; a reward model directory has ` +
            `architectures ["LlamaForSequenceClassification"] (or Qwen2/Qwen3/SmolLM3/Olmo2/Mistral/GPT2, or Gemma3Text) with num_labels 1`,
        );
      }
      tokenizer.checkFitsModel(model.config.vocabSize, dir);
    } catch (err) {
      await model.dispose();
      throw err;
    }
    return new HfRewardModelSource(model, tokenizer, dir, chunkSize);
  }

  checkChatPrompts(): void {
    if (this.tokenizer.chatTemplate === undefined) {
      throw new Error(
        `${this.name} has no chat template, so it cannot score a chat prompt; give the prompts as plain text, ` +
          `or supply a template for it (chatTemplate)`,
      );
    }
  }

  /**
   * The reward model's own ids for one item: what it scores, read at the last token. A special token the reward
   * model has no row for (Gemma 3's <image_soft_token>) spelled out in the response is taken out of its text rather
   * than failing the run, which would fail the same way again on resume; in the prompt or the template it fails.
   */
  encodeItem(prompt: ChatRewardPrompt, response: RewardResponse): Int32Array {
    if (prompt.messages !== undefined) this.checkChatPrompts();
    const responseText = this.tokenizer.withoutTokensBeyondModel(response.text);
    let ids: Int32Array;
    if (this.tokenizer.chatTemplate !== undefined) {
      const messages: ChatMessage[] = prompt.messages !== undefined ? [...prompt.messages] : [{ role: "user", content: prompt.text }];
      messages.push({ role: "assistant", content: responseText });
      ids = this.tokenizer.encodeChat(messages, { addGenerationPrompt: false });
    } else {
      const head = this.tokenizer.encode(prompt.text);
      const tail = this.tokenizer.encode(responseText, { addSpecialTokens: false });
      ids = new Int32Array(head.length + tail.length);
      ids.set(head);
      ids.set(tail, head.length);
    }
    // transformers scores at the rightmost token that is not padding; with pad == eos a template's closing EOS
    // is skipped. Dropping trailing pads gives the same position (attention is causal, so nothing else changes).
    const pad = this.model.config.padTokenId;
    let end = ids.length;
    while (pad >= 0 && end > 0 && ids[end - 1] === pad) end--;
    return ids.subarray(0, end);
  }

  async score(batch: RewardBatch): Promise<number[]> {
    checkRewardBatch(batch);
    const max = this.model.config.maxPositions;
    const sequences = batch.responses.map((response, i) => {
      const ids = this.encodeItem(batch.prompts[i] as ChatRewardPrompt, response);
      if (ids.length === 0) throw new Error(`${this.name}: item ${i} encodes to no tokens`);
      if (ids.length > max) {
        throw new Error(
          `${this.name}: item ${i} is ${ids.length} tokens, more than the model's ${max} positions ` +
            `(max_position_embeddings); shorten the prompts or lower sampling.maxNewTokens`,
        );
      }
      return { prompt: ids, response: [] };
    });
    return scoreInChunks(this.model, sequences, this.chunkSize);
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}
