// Tokenizer parity with transformers (ids, decoding, chat templates, stop tokens) on the committed fixtures made
// by tools/make_hf_fixtures.py, and the errors for broken or incomplete tokenizer directories.

import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { HfTokenizer } from "../src/tokenizer/index.js";
import type { ChatMessage } from "../src/tokenizer/index.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");

interface CorpusCase {
  text: string;
  ids: number[];
  ids_no_special: number[];
  decoded: string;
  decoded_skip_special: string;
}
interface ChatCase {
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  text: string;
  ids: number[];
}
const cases = JSON.parse(readFileSync(join(FIXTURES, "tokenizer_cases.json"), "utf8")) as Record<
  string,
  { corpus: CorpusCase[]; chats: ChatCase[] }
>;

const scratch = mkdtempSync(join(tmpdir(), "optune-tokenizer-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe.each(Object.keys(cases))("tokenizer %s matches transformers", (name) => {
  const fixture = cases[name]!;

  it("encodes the corpus to the same ids, with and without special tokens", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, name));
    for (const c of fixture.corpus) {
      expect(Array.from(tok.encode(c.text)), JSON.stringify(c.text)).toEqual(c.ids);
      expect(Array.from(tok.encode(c.text, { addSpecialTokens: false })), JSON.stringify(c.text)).toEqual(c.ids_no_special);
    }
  });

  it("decodes to the same text", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, name));
    for (const c of fixture.corpus) {
      expect(tok.decode(c.ids, { skipSpecialTokens: false }), JSON.stringify(c.text)).toBe(c.decoded);
      expect(tok.decode(c.ids), JSON.stringify(c.text)).toBe(c.decoded_skip_special);
    }
  });

  it("renders the chat template to the same text and ids", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, name));
    expect(tok.chatTemplate === undefined).toBe(fixture.chats.length === 0);
    for (const c of fixture.chats) {
      const options = { addGenerationPrompt: c.add_generation_prompt };
      expect(tok.applyChatTemplate(c.messages, options)).toBe(c.text);
      expect(Array.from(tok.encodeChat(c.messages, options))).toEqual(c.ids);
    }
  });
});

describe("clean_up_tokenization_spaces", () => {
  // Llama 3's tokenizer_config.json sets it; transformers 5 ignores it for BPE models unless the override flag is
  // also set, so "end ." must decode as "end ." there (the JS library alone would give "end.").
  async function withConfig(fields: Record<string, unknown>): Promise<HfTokenizer> {
    const dir = join(scratch, `cleanup-${Object.keys(fields).length}`);
    cpSync(join(FIXTURES, "smollm"), dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ ...config, ...fields }));
    return HfTokenizer.load(dir);
  }

  it("is ignored for a BPE model, as transformers 5 does", async () => {
    const tok = await withConfig({ clean_up_tokenization_spaces: true });
    expect(tok.decode(tok.encode("end . it 's", { addSpecialTokens: false }))).toBe("end . it 's");
  });

  it("applies with transformers' override flag", async () => {
    const tok = await withConfig({
      clean_up_tokenization_spaces: true,
      clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output: true,
    });
    expect(tok.decode(tok.encode("end . it 's", { addSpecialTokens: false }))).toBe("end. it's");
  });
});

describe("stop tokens", () => {
  it("come from generation_config.json, an id or a list", async () => {
    const smollm = await HfTokenizer.load(join(FIXTURES, "smollm"));
    expect(smollm.stopTokens.ids).toEqual([smollm.tokenToId("<|im_end|>")]);
    expect(smollm.stopTokens.origin).toContain("generation_config.json");
    const qwen = await HfTokenizer.load(join(FIXTURES, "qwen2"));
    expect(qwen.stopTokens.ids).toEqual([qwen.tokenToId("<|im_end|>"), qwen.tokenToId("<|endoftext|>")]);
    const qwen3 = await HfTokenizer.load(join(FIXTURES, "qwen3"));
    expect(qwen3.stopTokens.ids).toEqual([qwen3.tokenToId("<|im_end|>"), qwen3.tokenToId("<|endoftext|>")]);
  });

  it("fall back to the tokenizer's eos_token without generation_config.json", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "reward_llama"));
    expect(tok.stopTokens.ids).toEqual([tok.tokenToId("</s>")]);
    expect(tok.stopTokens.origin).toContain("eos_token");
  });

  it("reject an id outside the vocabulary, naming the file", async () => {
    const dir = copyFixture("smollm", "bad_eos");
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [2, 99999] }));
    await expect(HfTokenizer.load(dir)).rejects.toThrow(/generation_config\.json.*99999.*outside/);
  });

  it("reject a non-integer id", async () => {
    const dir = copyFixture("smollm", "bad_eos_type");
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: "2" }));
    await expect(HfTokenizer.load(dir)).rejects.toThrow(/field "eos_token_id" = "2"/);
  });
});

describe("chat templates", () => {
  it("surface raise_exception with the template's origin", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "reward_llama"));
    expect(() => tok.applyChatTemplate([{ role: "tool", content: "x" }], { addGenerationPrompt: false })).toThrow(
      /chat_template\.jinja failed on a conversation with roles \[tool\]: .*unsupported role tool/,
    );
  });

  it("surface the [INST] template's refusals of other roles and of turns out of order", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "mistral"));
    expect(() => tok.applyChatTemplate([{ role: "tool", content: "x" }], { addGenerationPrompt: false })).toThrow(
      /mistral[/\\]chat_template\.jinja failed on a conversation with roles \[tool\]: .*unsupported role tool/,
    );
    const twoUsers = [{ role: "user", content: "a" }, { role: "user", content: "b" }];
    expect(() => tok.applyChatTemplate(twoUsers, { addGenerationPrompt: true })).toThrow(
      /roles \[user, user\]: .*turns must alternate user \/ assistant/,
    );
    // a leading system message opens the first user turn
    const chat = [{ role: "system", content: "S" }, { role: "user", content: "U" }, { role: "assistant", content: "A" }];
    expect(tok.applyChatTemplate(chat, { addGenerationPrompt: false })).toBe("<s>[INST] S\n\nU [/INST] A</s>");
  });

  it("can be supplied where the directory has none", async () => {
    const plain = await HfTokenizer.load(join(FIXTURES, "reward_gpt2"));
    expect(() => plain.encodeChat([{ role: "user", content: "hi" }], { addGenerationPrompt: true })).toThrow(
      /has no chat template.*chatTemplate option/,
    );
    const tok = await HfTokenizer.load(join(FIXTURES, "reward_gpt2"), {
      chatTemplate: "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{{ eos_token }}",
    });
    expect(tok.applyChatTemplate([{ role: "user", content: "hi" }], { addGenerationPrompt: true })).toBe(
      "user: hi\n<|endoftext|>",
    );
  });

  it("report a template that does not parse", async () => {
    await expect(HfTokenizer.load(join(FIXTURES, "smollm"), { chatTemplate: "{% for m in messages %}" })).rejects.toThrow(
      /chat template from the chatTemplate option does not parse/,
    );
  });
});

describe("broken tokenizer directories", () => {
  it("name the missing tokenizer.json and how to get one", async () => {
    await expect(HfTokenizer.load(scratch)).rejects.toThrow(/has no tokenizer\.json.*save_pretrained/);
  });

  it("name a file that is not JSON", async () => {
    const dir = copyFixture("smollm", "bad_json");
    writeFileSync(join(dir, "tokenizer_config.json"), "{ not json");
    await expect(HfTokenizer.load(dir)).rejects.toThrow(/tokenizer_config\.json is not valid JSON/);
  });

  it("name a special token that is not in the vocabulary", async () => {
    const dir = copyFixture("smollm", "bad_special");
    const configPath = join(dir, "tokenizer_config.json");
    const config = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
    writeFileSync(configPath, JSON.stringify({ ...config, eos_token: "<|nope|>" }));
    await expect(HfTokenizer.load(dir)).rejects.toThrow(/field "eos_token" = "<\|nope\|>" is not a token/);
  });

  it("name an unsupported tokenizer model", async () => {
    const dir = copyFixture("smollm", "bad_model");
    const path = join(dir, "tokenizer.json");
    const json = JSON.parse(readFileSync(path, "utf8")) as { model: Record<string, unknown> };
    json.model["type"] = "NotAModel";
    writeFileSync(path, JSON.stringify(json));
    await expect(HfTokenizer.load(dir)).rejects.toThrow(/field "model\.type" = "NotAModel": unsupported tokenizer model/);
  });
});

describe("ids and models", () => {
  it("decode rejects ids outside the vocabulary", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "smollm"));
    expect(() => tok.decode([1, tok.vocabSize])).toThrow(/ids\[1\] = 330 is outside the vocabulary \[0, 330\)/);
    expect(tok.decode([])).toBe("");
  });

  it("checkFitsModel names both directories when the sizes disagree", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "qwen2"));
    expect(() => tok.checkFitsModel(tok.vocabSize, "m")).not.toThrow();
    expect(() => tok.checkFitsModel(10, "/models/x")).toThrow(/tokenizer in .*qwen2 has \d+ tokens but the model in \/models\/x has only 10/);
  });

  it("checkFitsModel lets special tokens past the model's rows through (Gemma 3's <image_soft_token>), encode refuses them", async () => {
    // Gemma 3's tokenizer has <image_soft_token> at 262144, one past the 262144 embeddings of its text models.
    const dir = mkdtempSync(join(tmpdir(), "optune-gemma-tok-"));
    try {
      cpSync(join(FIXTURES, "gemma3"), dir, { recursive: true });
      const path = join(dir, "tokenizer.json");
      const json = JSON.parse(readFileSync(path, "utf8")) as { added_tokens: Record<string, unknown>[] };
      const rows = (await HfTokenizer.load(dir)).vocabSize;
      const extra = { id: rows, content: "<image_soft_token>", single_word: false, lstrip: false, rstrip: false,
        normalized: false, special: true };
      writeFileSync(path, JSON.stringify({ ...json, added_tokens: [...json.added_tokens, extra] }));
      const tok = await HfTokenizer.load(dir);
      expect(tok.vocabSize).toBe(rows + 1);
      expect(() => tok.checkFitsModel(rows, "/models/gemma")).not.toThrow();
      expect(Array.from(tok.encode("hello there", { addSpecialTokens: false })).every((id) => id < rows)).toBe(true);
      // text a model did not choose (a response a reward model reads) can lose the token instead
      expect(tok.withoutTokensBeyondModel("look: <image_soft_token>!")).toBe("look: !");
      expect(() => tok.encode("look: <image_soft_token>")).toThrow(
        new RegExp(`holds the special token "<image_soft_token>" \\(id ${rows}\\), which the model has no embedding for \\(vocab_size ${rows}\\)`),
      );
      // the same token not marked special is a tokenizer for a larger model
      writeFileSync(path, JSON.stringify({ ...json, added_tokens: [...json.added_tokens, { ...extra, special: false }] }));
      const plain = await HfTokenizer.load(dir);
      expect(() => plain.checkFitsModel(rows, "/models/gemma")).toThrow(
        new RegExp(`has ${rows + 1} tokens but the model in /models/gemma has only ${rows} embeddings \\(vocab_size; token "<image_soft_token>" is id ${rows}\\)`),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("Qwen3's <think> and </think> are one added token each, not special, so decoding keeps them", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "qwen3"));
    const ids = Array.from(tok.encode("<think>\nhm\n</think>\n\nok", { addSpecialTokens: false }));
    expect(ids[0]).toBe(tok.tokenToId("<think>"));
    expect(ids).toContain(tok.tokenToId("</think>"));
    expect(tok.decode(ids)).toBe("<think>\nhm\n</think>\n\nok");
  });

  it("copyFilesTo writes a loadable tokenizer directory", async () => {
    const tok = await HfTokenizer.load(join(FIXTURES, "smollm"));
    const dst = join(scratch, "copied");
    tok.copyFilesTo(dst);
    expect(readdirSync(dst).sort()).toEqual(["chat_template.jinja", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]);
    const again = await HfTokenizer.load(dst);
    expect(Array.from(again.encode("Hello world"))).toEqual(Array.from(tok.encode("Hello world")));
    expect(again.stopTokens.ids).toEqual(tok.stopTokens.ids);
  });

  it("copyFilesTo carries a multimodal processor's files", async () => {
    const src = copyFixture("smollm", "with-processor");
    writeFileSync(join(src, "preprocessor_config.json"), '{"image_processor_type": "Gemma3ImageProcessor"}');
    writeFileSync(join(src, "processor_config.json"), '{"image_seq_length": 256}');
    const dst = join(scratch, "copied-processor");
    (await HfTokenizer.load(src)).copyFilesTo(dst);
    expect(readFileSync(join(dst, "preprocessor_config.json"), "utf8")).toContain("Gemma3ImageProcessor");
    expect(readFileSync(join(dst, "processor_config.json"), "utf8")).toContain("image_seq_length");
  });
});

function copyFixture(name: string, as: string): string {
  const dir = join(scratch, as);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  return dir;
}
