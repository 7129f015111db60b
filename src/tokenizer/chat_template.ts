// Chat templates: the Jinja template a model directory ships (chat_template.jinja, or "chat_template" inside
// tokenizer_config.json), rendered with @huggingface/jinja the way transformers' apply_chat_template does: the
// messages, add_generation_prompt, the tokenizer's special tokens (bos_token, eos_token, ...) and any extra
// variables the caller gives (apply_chat_template's keyword arguments, e.g. Qwen3's enable_thinking).

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { Template } from "@huggingface/jinja";

export interface ChatMessage {
  role: string;
  content: string;
}

/** Checks a list of chat messages; `where` says where it came from (file and line, option name, ...). */
export function checkMessages(value: unknown, where: string): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new Error(`${where}: messages must be a non-empty list of {"role": ..., "content": ...} objects`);
  }
  return value.map((m: unknown, i) => {
    const msg = m as Partial<Record<string, unknown>> | null;
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
      throw new Error(`${where}: messages[${i}] must be an object {"role": ..., "content": ...}, got ${JSON.stringify(m)}`);
    }
    if (typeof msg.role !== "string" || msg.role === "") {
      throw new Error(`${where}: messages[${i}].role must be a non-empty string, got ${JSON.stringify(msg.role)}`);
    }
    if (typeof msg.content !== "string") {
      throw new Error(`${where}: messages[${i}].content must be a string, got ${JSON.stringify(msg.content)}`);
    }
    return { role: msg.role, content: msg.content };
  });
}

export interface RenderOptions {
  /** Append the opening of an assistant turn (for prompting); false for a finished conversation. */
  addGenerationPrompt: boolean;
}

/** Extra template variables, as transformers' apply_chat_template(**kwargs): {"enable_thinking": false}, ... */
export type ChatTemplateArgs = Readonly<Record<string, unknown>>;

export class ChatTemplate {
  private readonly template: Template;
  private readonly variables: Readonly<Record<string, unknown>>;

  /**
   * @param source the Jinja text
   * @param origin where it came from, for error messages
   * @param specials the special tokens the template may use (bos_token, eos_token, ...)
   * @param args extra variables; they may not take the name of messages, add_generation_prompt or a special token
   */
  constructor(
    readonly source: string,
    readonly origin: string,
    specials: Readonly<Record<string, string>>,
    args: ChatTemplateArgs = {},
  ) {
    for (const name of Object.keys(args)) {
      if (name === "messages" || name === "add_generation_prompt" || name in specials) {
        throw new Error(
          `chat template from ${origin}: argument "${name}" would replace a variable optune sets itself ` +
            `(messages, add_generation_prompt and the special tokens ${Object.keys(specials).join(", ") || "(none)"}); ` +
            `remove it from chatTemplateArgs`,
        );
      }
    }
    this.variables = { ...specials, ...args };
    try {
      this.template = new Template(source);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new Error(`chat template from ${origin} does not parse: ${reason}`, { cause: err });
    }
  }

  render(messages: readonly ChatMessage[], options: RenderOptions): string {
    try {
      return this.template.render({
        ...this.variables,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: options.addGenerationPrompt,
      });
    } catch (err) {
      // raise_exception(...) in a template lands here too, e.g. for an unsupported role order.
      const reason = err instanceof Error ? err.message : String(err);
      throw new Error(`chat template from ${this.origin} failed on ${describe(messages)}: ${reason}`, { cause: err });
    }
  }
}

function describe(messages: readonly ChatMessage[]): string {
  return `a conversation with roles [${messages.map((m) => m.role).join(", ")}]`;
}

/**
 * The template a model directory ships, as transformers finds it: chat_template.jinja wins over the
 * "chat_template" field of tokenizer_config.json; a list of named templates uses the one named "default".
 */
export function findChatTemplate(
  dir: string,
  tokenizerConfig: Record<string, unknown>,
): { source: string; origin: string } | undefined {
  const file = join(dir, "chat_template.jinja");
  if (existsSync(file)) return { source: readFileSync(file, "utf8"), origin: file };
  const configPath = join(dir, "tokenizer_config.json");
  const value = tokenizerConfig["chat_template"];
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return { source: value, origin: `${configPath} (chat_template)` };
  if (Array.isArray(value)) {
    const named = value.find((t: unknown) => (t as { name?: unknown } | null)?.name === "default") as
      | { template?: unknown }
      | undefined;
    if (named !== undefined && typeof named.template === "string") {
      return { source: named.template, origin: `${configPath} (chat_template "default")` };
    }
    throw new Error(
      `${configPath}: field "chat_template" is a list without an entry {"name": "default", "template": ...}; ` +
        `pass the template to use explicitly (chatTemplate option)`,
    );
  }
  throw new Error(`${configPath}: field "chat_template" = ${JSON.stringify(value)}: expected a Jinja string`);
}
