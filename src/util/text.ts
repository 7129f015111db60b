// Text as read from a user's file.

/** `text` without the byte-order mark some editors write at its start (JSON and YAML parsers reject it). */
export function stripBom(text: string): string {
  return text.startsWith("\uFEFF") ? text.slice(1) : text;
}
