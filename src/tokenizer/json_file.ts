// Reading the JSON files of a Hugging Face model directory, with errors that name the file and say what to fix.

import { readFileSync } from "node:fs";

/** The parsed object in `path`; undefined when the file does not exist and `optional` is set. */
export function readJsonObject(path: string, optional: true): Record<string, unknown> | undefined;
export function readJsonObject(path: string, optional?: false): Record<string, unknown>;
export function readJsonObject(path: string, optional = false): Record<string, unknown> | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`cannot read ${path}: ${reason}`, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`${path} is not valid JSON (${reason}); re-save it with save_pretrained or fix it by hand`, {
      cause: err,
    });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${path} must hold a JSON object, got ${Array.isArray(value) ? "an array" : typeof value}`);
  }
  return value as Record<string, unknown>;
}

/** A special token as tokenizer_config.json writes it: a string, an AddedToken object {content}, or null. */
export function tokenText(value: unknown, field: string, path: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") return value;
  if (typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  throw new Error(`${path}: field "${field}" = ${JSON.stringify(value)}: expected a token string or {"content": ...}`);
}
