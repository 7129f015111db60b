// chatTemplateArgs: extra chat template variables, as transformers' apply_chat_template(**kwargs), e.g. Qwen3's
// enable_thinking. They reach the policy's prompts (model.chatTemplateArgs) and a reward model's conversations (its
// source's chatTemplateArgs); names optune sets itself are refused, and so are arguments with no template to use them.

import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

import { describe, expect, it } from "vitest";

import { loadConfig } from "../src/config/schema.js";
import { createUserTask } from "../src/data/user_task.js";
import { userTaskOptions } from "../src/data/user_config.js";
import { HfRewardModelSource } from "../src/rewards/hf_reward_model.js";
import { HfTokenizer } from "../src/tokenizer/index.js";

import { LOOP_PARTS, UserSections } from "./user_sections.js";

const FIXTURES = resolve(import.meta.dirname, "fixtures", "hf");

// Qwen3-style: an empty thinking block after the assistant opening when enable_thinking is false.
const THINKING_TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n" +
  "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}";
const chat = [{ role: "user", content: "What is the capital of France?" }];

describe("chat template arguments", () => {
  it("are template variables: enable_thinking false adds the empty thinking block", async () => {
    const plain = await HfTokenizer.load(join(FIXTURES, "smollm"), { chatTemplate: THINKING_TEMPLATE });
    const off = await HfTokenizer.load(join(FIXTURES, "smollm"), {
      chatTemplate: THINKING_TEMPLATE,
      chatTemplateArgs: { enable_thinking: false },
    });
    const on = await HfTokenizer.load(join(FIXTURES, "smollm"), {
      chatTemplate: THINKING_TEMPLATE,
      chatTemplateArgs: { enable_thinking: true },
    });
    const opening = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    expect(plain.applyChatTemplate(chat, { addGenerationPrompt: true })).toBe(opening);
    expect(on.applyChatTemplate(chat, { addGenerationPrompt: true })).toBe(opening);
    expect(off.applyChatTemplate(chat, { addGenerationPrompt: true })).toBe(`${opening}<think>\n\n</think>\n\n`);
    // Nested values reach the template as objects.
    const nested = await HfTokenizer.load(join(FIXTURES, "smollm"), {
      chatTemplate: "{{ tools[0].name }}|{{ messages[0].content }}",
      chatTemplateArgs: { tools: [{ name: "search" }] },
    });
    expect(nested.applyChatTemplate(chat, { addGenerationPrompt: false })).toBe("search|What is the capital of France?");
  });

  it("render the qwen3 fixture's template as transformers does with enable_thinking true and false", async () => {
    type Case = { messages: never[]; add_generation_prompt: boolean; text: string; ids: number[]; template_args: object };
    const cases = (
      JSON.parse(readFileSync(join(FIXTURES, "tokenizer_cases.json"), "utf8")) as {
        qwen3: { template_arg_chats: Case[] };
      }
    ).qwen3.template_arg_chats;
    expect(cases.map((c) => c.template_args)).toContainEqual({ enable_thinking: false });
    for (const c of cases) {
      const tok = await HfTokenizer.load(join(FIXTURES, "qwen3"), { chatTemplateArgs: c.template_args as Record<string, unknown> });
      const options = { addGenerationPrompt: c.add_generation_prompt };
      expect(tok.applyChatTemplate(c.messages, options)).toBe(c.text);
      expect(Array.from(tok.encodeChat(c.messages, options))).toEqual(c.ids);
    }
  });

  it("may not replace messages, add_generation_prompt or a special token", async () => {
    for (const name of ["messages", "add_generation_prompt", "eos_token"]) {
      await expect(
        HfTokenizer.load(join(FIXTURES, "smollm"), { chatTemplateArgs: { [name]: "x" } }),
      ).rejects.toThrow(new RegExp(`argument "${name}" would replace a variable optune sets itself.*chatTemplateArgs`));
    }
  });

  it("are refused where there is no template to use them (an empty set is nothing to refuse)", async () => {
    await expect(
      HfTokenizer.load(join(FIXTURES, "reward_gpt2"), { chatTemplateArgs: { enable_thinking: false } }),
    ).rejects.toThrow(/has no chat template, so chatTemplateArgs \(enable_thinking\) would be ignored/);
    const plain = await HfTokenizer.load(join(FIXTURES, "reward_gpt2"), { chatTemplateArgs: {} });
    expect(plain.chatTemplate).toBeUndefined();
  });

  it("reach a reward model's conversations", async () => {
    const template = "{% for m in messages %}[{{ m.role }}{% if tag is defined %}:{{ tag }}{% endif %}] {{ m.content }}{% endfor %}";
    const plain = await HfRewardModelSource.load(join(FIXTURES, "reward_llama"), { chatTemplate: template });
    const tagged = await HfRewardModelSource.load(join(FIXTURES, "reward_llama"), {
      chatTemplate: template,
      chatTemplateArgs: { tag: "x" },
    });
    const prompt = { text: "hi" };
    const response = { text: "hello", endedWithEos: true };
    const a = Array.from(plain.encodeItem(prompt, response));
    const b = Array.from(tagged.encodeItem(prompt, response));
    expect(plain.tokenizer.decode(Int32Array.from(a))).toContain("[user] hi[assistant] hello");
    expect(tagged.tokenizer.decode(Int32Array.from(b))).toContain("[user:x] hi[assistant:x] hello");
    await plain.dispose();
    await tagged.dispose();
  });
});

describe("chatTemplateArgs in a run config", () => {

  it("render the policy's prompts and are kept for each reward model source", async () => {
    const parsed = UserSections.parse({
      model: { policy: "smollm", chatTemplate: THINKING_TEMPLATE, chatTemplateArgs: { enable_thinking: false } },
      prompts: { file: "prompts.jsonl", evalCount: 3, seed: 1 },
      reward: { sources: [{ type: "model", path: "reward_llama", chatTemplateArgs: { add_system: true } }] },
    });
    const options = userTaskOptions({ ...parsed, ...LOOP_PARTS }, FIXTURES);
    expect(options.chatTemplateArgs).toEqual({ enable_thinking: false });
    expect(options.reward.sources[0]).toEqual({
      type: "model",
      path: "reward_llama",
      chatTemplateArgs: { add_system: true },
      weight: 1,
    });
    const task = await createUserTask(options);
    const prompt = [...task.trainPrompts, ...task.evalPrompts].find((p) => p.messages !== undefined)!;
    expect(task.tokenizer.decode(prompt.ids, { skipSpecialTokens: false })).toMatch(/<\|im_start\|>assistant\n<think>\n\n<\/think>\n\n$/);
  });

  it("must be an object, and only on a user task", () => {
    expect(() =>
      UserSections.parse({ model: { chatTemplateArgs: "enable_thinking=false" }, reward: {} }),
    ).toThrow(/must be an object of template variables/);
    expect(() => loadConfig({ model: { chatTemplateArgs: { enable_thinking: false } } })).toThrow(
      /model\.chatTemplateArgs: only used when task is 'user'/,
    );
  });
});
