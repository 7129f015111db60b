// Parity with transformers on the committed fixtures (tools/make_hf_fixtures.py): tokenizer ids, response
// log-probs of the tiny Llama (SmolLM-style), Qwen2, Qwen3, Gemma 3 and Mistral policies, reward-model scores (Llama,
// GPT-2, Qwen3, Gemma 3, Mistral) through each reward model's own tokenizer and template, and a checkpoint written by
// optune that transformers loaded (recorded logits).

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { EngineModel, packBatch } from "../src/engine/index.js";
import type { ChatRewardPrompt } from "../src/rewards/module.js";
import { HfRewardModelSource } from "../src/rewards/hf_reward_model.js";
import { checkReference, loadModelDir, type ChatMessage } from "../src/tokenizer/index.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");
const REL_TOL = 1e-4;

interface PolicyItem {
  prompt: string;
  response: string;
  messages: ChatMessage[] | null;
  prompt_ids: number[];
  response_ids: number[];
  token_logprobs: number[];
  logprob: number;
}
interface RewardItem {
  prompt: string | null;
  messages: ChatMessage[] | null;
  response: string;
  ids: number[];
  score: number;
}
const parity = JSON.parse(readFileSync(join(FIXTURES, "parity.json"), "utf8")) as {
  policies: Record<string, PolicyItem[]>;
  reward_models: Record<string, RewardItem[]>;
};

const scratch = mkdtempSync(join(tmpdir(), "optune-parity-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function expectClose(actual: number, expected: number, what: string): void {
  const err = Math.abs(actual - expected);
  expect(err, `${what}: optune ${actual} vs transformers ${expected}`).toBeLessThanOrEqual(REL_TOL * Math.max(1, Math.abs(expected)));
}

describe.each(Object.keys(parity.policies))("policy %s", (name) => {
  const items = parity.policies[name]!;

  it("tokenizes prompts and responses to transformers' ids", async () => {
    const { model, tokenizer } = await loadModelDir(join(FIXTURES, name));
    for (const item of items) {
      const promptIds =
        item.messages === null ? tokenizer.encode(item.prompt) : tokenizer.encodeChat(item.messages, { addGenerationPrompt: true });
      expect(Array.from(promptIds)).toEqual(item.prompt_ids);
      expect(Array.from(tokenizer.encode(item.response, { addSpecialTokens: false }))).toEqual(item.response_ids);
    }
    await model.dispose();
  });

  it("has transformers' response log-probs", async () => {
    const { model } = await loadModelDir(join(FIXTURES, name));
    const result = await model.logprobs(packBatch(items.map((i) => ({ prompt: i.prompt_ids, response: i.response_ids }))));
    let at = 0;
    items.forEach((item, k) => {
      expectClose(result.seqLogps[k]!, item.logprob, `${name} item ${k} sum`);
      item.token_logprobs.forEach((v, t) => expectClose(result.tokenLogps[at + t]!, v, `${name} item ${k} token ${t}`));
      at += item.token_logprobs.length;
    });
    expect(at).toBe(result.tokenLogps.length);
    await model.dispose();
  });
});

describe.each(Object.keys(parity.reward_models))("reward model %s", (name) => {
  const items = parity.reward_models[name]!;

  it("re-tokenizes text with its own tokenizer and template and scores like transformers", async () => {
    const source = await HfRewardModelSource.load(join(FIXTURES, name));
    // The policy ids are deliberately junk: the reward model must not look at them.
    const junk = Int32Array.from([9999, -1]);
    const prompts: ChatRewardPrompt[] = items.map((i) =>
      i.messages === null ? { text: i.prompt!, ids: junk } : { text: "(rendered by the policy)", ids: junk, messages: i.messages },
    );
    const responses = items.map((i) => ({ text: i.response, ids: junk, endedWithEos: true }));
    items.forEach((item, k) => {
      // The reward model's ids: transformers' ids, minus trailing padding (transformers pools before it).
      const ids = Array.from(source.encodeItem(prompts[k]!, responses[k]!));
      expect(item.ids.slice(0, ids.length)).toEqual(ids);
    });
    const scores = await source.score({ prompts, responses });
    items.forEach((item, k) => expectClose(scores[k]!, item.score, `${name} item ${k}`));
    await source.dispose();
  });
});

describe("a Gemma 3 reward model whose tokenizer has a special token past its rows", () => {
  it("scores a response that spells the token out as the response without it (the run goes on)", async () => {
    const dir = join(scratch, "reward_gemma3_image_token");
    cpSync(join(FIXTURES, "reward_gemma3"), dir, { recursive: true });
    const path = join(dir, "tokenizer.json");
    const json = JSON.parse(readFileSync(path, "utf8")) as { added_tokens: Record<string, unknown>[] };
    const model = await EngineModel.load(dir);
    const rows = model.config.vocabSize;
    await model.dispose();
    json.added_tokens.push({ id: rows, content: "<image_soft_token>", single_word: false, lstrip: false,
      rstrip: false, normalized: false, special: true });
    writeFileSync(path, JSON.stringify(json));
    const source = await HfRewardModelSource.load(dir);
    const junk = Int32Array.from([0]);
    const prompts: ChatRewardPrompt[] = [{ text: "hi", ids: junk }, { text: "hi", ids: junk }];
    const responses = [
      { text: "a <image_soft_token> b", ids: junk, endedWithEos: true },
      { text: "a  b", ids: junk, endedWithEos: true },
    ];
    expect(Array.from(source.encodeItem(prompts[0]!, responses[0]!))).toEqual(
      Array.from(source.encodeItem(prompts[1]!, responses[1]!)),
    );
    const scores = await source.score({ prompts, responses });
    expect(scores[0]).toBe(scores[1]);
    // in the prompt, the token still fails (the reward model's own input, not the policy's choice)
    await expect(source.score({ prompts: [{ text: "<image_soft_token>", ids: junk }], responses: [responses[1]!] })).rejects.toThrow(
      /holds the special token "<image_soft_token>"/,
    );
    await source.dispose();
  });
});

describe("reward model errors", () => {
  it("a causal LM is not a reward model", async () => {
    await expect(HfRewardModelSource.load(join(FIXTURES, "smollm"))).rejects.toThrow(/smollm is a causal language model, not a reward model/);
  });

  it("a chat prompt needs a chat template", async () => {
    const source = await HfRewardModelSource.load(join(FIXTURES, "reward_gpt2"));
    const prompt: ChatRewardPrompt = { text: "x", ids: new Int32Array(1), messages: [{ role: "user", content: "hi" }] };
    await expect(source.score({ prompts: [prompt], responses: [{ text: "y", ids: new Int32Array(1), endedWithEos: true }] })).rejects.toThrow(
      /reward_gpt2 has no chat template, so it cannot score a chat prompt/,
    );
    await source.dispose();
  });

  it("an item longer than the model's positions names the item", async () => {
    const source = await HfRewardModelSource.load(join(FIXTURES, "reward_gpt2"));
    const long = "word ".repeat(600);
    const item = { prompts: [{ text: "a", ids: new Int32Array(1) }, { text: long, ids: new Int32Array(1) }], responses: [0, 1].map(() => ({ text: "b", ids: new Int32Array(1), endedWithEos: true })) };
    await expect(source.score(item)).rejects.toThrow(/item 1 is \d+ tokens, more than the model's 512 positions/);
    await source.dispose();
  });
});

describe("checkpoints written by optune", () => {
  const dir = join(FIXTURES, "optune_saved");
  const expected = JSON.parse(readFileSync(join(dir, "expected_logits.json"), "utf8")) as {
    sequences: Array<{ ids: number[]; logits: number[][] }>;
  };

  it("load in transformers with identical logits (recorded by tools/make_hf_fixtures.py roundtrip)", async () => {
    const model = await EngineModel.load(dir);
    for (const seq of expected.sequences) {
      const logits = await model.logits(packBatch([{ prompt: seq.ids, response: [] }]));
      const vocab = model.config.vocabSize;
      expect(logits.length).toBe(seq.ids.length * vocab);
      seq.logits.forEach((row, t) => row.forEach((v, j) => expectClose(logits[t * vocab + j]!, v, `position ${t} logit ${j}`)));
    }
    await model.dispose();
  });

  it("save then load gives back the same weights", async () => {
    const model = await EngineModel.load(join(FIXTURES, "qwen2"));
    const out = join(scratch, "resaved");
    await model.save(out);
    const again = await EngineModel.load(out);
    expect(await again.getParams()).toEqual(await model.getParams());
    expect(again.config).toEqual(model.config);
    await Promise.all([model.dispose(), again.dispose()]);
  });
});

describe("model directories", () => {
  it("loadModelDir refuses a reward model as a policy", async () => {
    await expect(loadModelDir(join(FIXTURES, "reward_llama"))).rejects.toThrow(/reward_llama is a reward model .*not a causal language model/);
  });

  it("loadModelDir refuses a tokenizer larger than the model's vocabulary", async () => {
    await expect(loadModelDir(join(FIXTURES, "smollm"), { tokenizerDir: join(FIXTURES, "qwen2") })).rejects.toThrow(
      /tokenizer in .*qwen2 has 340 tokens but the model in .*smollm has only 330 embeddings/,
    );
  });

  it("unsupported config fields are named with their value", async () => {
    const dir = join(scratch, "rope");
    cpSync(join(FIXTURES, "smollm"), dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, rope_scaling: { rope_type: "yarn", factor: 8 } }));
    await expect(loadModelDir(dir)).rejects.toThrow(/field "rope_scaling" = .*unsupported RoPE variant "yarn"/);
    // llama3 is implemented, but needs its fields
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, rope_scaling: { rope_type: "llama3", factor: 8 } }));
    await expect(loadModelDir(dir)).rejects.toThrow(/field "rope_scaling" = .*llama3 RoPE needs low_freq_factor and high_freq_factor/);
  });

  it("Qwen3 fixtures keep the shapes their parity is about", async () => {
    // q wider than the hidden state (head_dim 16 > 32 / 4), embeddings padded past the tokenizer, as in real Qwen3.
    const { model, tokenizer } = await loadModelDir(join(FIXTURES, "qwen3"));
    expect(model.config).toMatchObject({ arch: "qwen3", dModel: 32, nHead: 4, nKvHead: 2, headDim: 16, tieEmbeddings: true });
    expect(model.config.ropeTheta).toBe(1e6);
    expect([tokenizer.vocabSize, model.config.vocabSize]).toEqual([352, 384]);
    await model.dispose();
    // The reward model has biases on q, k, v and o (attention_bias) and pads with <|endoftext|>, not the EOS.
    const rm = await EngineModel.load(join(FIXTURES, "reward_qwen3"));
    expect(rm.config).toMatchObject({ arch: "qwen3", rewardModel: true, headDim: 8, dModel: 16, qkvBias: true, oBias: true });
    expect(rm.config.padTokenId).not.toBe(rm.config.eosTokenId);
    await rm.dispose();
  });

  it("Gemma 3 fixtures keep the shapes their parity is about", async () => {
    // Sliding / full / sliding layers, each kind with its own RoPE base; the attention scale from
    // query_pre_attn_scalar (24), not head_dim (16); tied embeddings.
    const { model, tokenizer } = await loadModelDir(join(FIXTURES, "gemma3"));
    expect(model.config).toMatchObject({
      arch: "gemma3_text",
      dModel: 32,
      nLayer: 3,
      nHead: 4,
      nKvHead: 2,
      headDim: 16,
      dFf: 48,
      tieEmbeddings: true,
      queryPreAttnScalar: 24,
      slidingWindow: 8,
      layerTypes: ["sliding_attention", "full_attention", "sliding_attention"],
    });
    expect([model.config.ropeTheta, model.config.ropeLocalTheta]).toEqual([1e6, 1e4]);
    expect([tokenizer.vocabSize, model.config.vocabSize]).toEqual([420, 420]);
    // Every parity sequence is longer than the window, so the sliding layers' mask shows in the log-probs.
    for (const item of parity.policies["gemma3"]!) {
      expect(item.prompt_ids.length + item.response_ids.length).toBeGreaterThan(model.config.slidingWindow!);
    }
    // Gemma's tokenizer adds a BOS; generation stops at <eos> or <end_of_turn>; the assistant's turn is "model".
    expect(Array.from(tokenizer.encode("Hi"))[0]).toBe(tokenizer.tokenToId("<bos>"));
    expect(tokenizer.stopTokens.ids).toEqual([tokenizer.tokenToId("<eos>"), tokenizer.tokenToId("<end_of_turn>")]);
    expect(tokenizer.applyChatTemplate([{ role: "user", content: "Hi" }], { addGenerationPrompt: true })).toBe(
      "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    );
    await model.dispose();
    // The reward model has biases on q, k, v and o (attention_bias) and pads with <pad>, not the EOS.
    const rm = await EngineModel.load(join(FIXTURES, "reward_gemma3"));
    expect(rm.config).toMatchObject({
      arch: "gemma3_text",
      rewardModel: true,
      qkvBias: true,
      oBias: true,
      queryPreAttnScalar: 24,
      slidingWindow: 8,
      layerTypes: ["sliding_attention", "full_attention", "sliding_attention"],
    });
    expect(rm.config.padTokenId).not.toBe(rm.config.eosTokenId);
    await rm.dispose();
  });

  it("Mistral fixtures keep the shapes their parity is about", async () => {
    // Every layer attends through a window of 6 (Mistral 7B v0.1's layout); no attention biases; untied.
    const { model, tokenizer } = await loadModelDir(join(FIXTURES, "mistral"));
    expect(model.config).toMatchObject({
      arch: "mistral",
      dModel: 32,
      nLayer: 2,
      nHead: 4,
      nKvHead: 2,
      headDim: 8,
      tieEmbeddings: false,
      qkvBias: false,
      oBias: false,
      slidingWindow: 6,
      layerTypes: ["sliding_attention", "sliding_attention"],
    });
    expect([tokenizer.vocabSize, model.config.vocabSize]).toEqual([420, 420]);
    // Every parity sequence is longer than the window, so the window shows in the log-probs.
    for (const item of parity.policies["mistral"]!) {
      expect(item.prompt_ids.length + item.response_ids.length).toBeGreaterThan(model.config.slidingWindow!);
    }
    // Mistral's ids: <unk> <s> </s> [INST] [/INST] as 0-4, the markers special; the tokenizer adds <s>;
    // generation stops at </s>; the assistant's text follows [/INST] (no generation prompt).
    expect(["<unk>", "<s>", "</s>", "[INST]", "[/INST]"].map((t) => tokenizer.tokenToId(t))).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(tokenizer.encode("Hi"))[0]).toBe(1);
    expect(tokenizer.decode(tokenizer.encode("[INST] Hi [/INST] Yes</s>"))).toBe("Hi  Yes");
    expect(tokenizer.stopTokens.ids).toEqual([2]);
    expect(tokenizer.applyChatTemplate([{ role: "user", content: "Hi" }], { addGenerationPrompt: true })).toBe(
      "<s>[INST] Hi [/INST]",
    );
    await model.dispose();
    // The reward model has no window (sliding_window null) and no pad token: the score is read at the last token.
    const rm = await EngineModel.load(join(FIXTURES, "reward_mistral"));
    expect(rm.config).toMatchObject({ arch: "mistral", rewardModel: true, qkvBias: false, padTokenId: -1 });
    expect(rm.config.slidingWindow).toBeUndefined();
    expect(rm.config.layerTypes).toBeUndefined();
    await rm.dispose();
  });

  it("checkReference wants the policy's vocabulary", async () => {
    const a = await EngineModel.load(join(FIXTURES, "smollm"));
    const b = await EngineModel.load(join(FIXTURES, "qwen2"));
    expect(() => checkReference(a, "p", a, "r")).not.toThrow();
    expect(() => checkReference(a, "p", b, "r")).toThrow(/reference model r has vocab_size 340 but the policy p has 330/);
    await Promise.all([a.dispose(), b.dispose()]);
  });
});
