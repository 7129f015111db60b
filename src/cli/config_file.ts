// Reading a run config from a YAML or JSON file and laying command-line flags over it. Validation is left to
// the one zod schema (loadConfig), so a bad file or flag is reported like any other bad field.

import { readFileSync } from "node:fs";
import { extname } from "node:path";

import { parse as parseYaml } from "yaml";

import { stripBom } from "../util/text.js";

/** The raw (unvalidated) config in a .yaml/.yml or .json file. */
export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : String(err);
    throw new Error(`config file ${path}: ${why} (check the --config path; it is relative to the current directory)`, {
      cause: err,
    });
  }
  const ext = extname(path).toLowerCase();
  text = stripBom(text);
  try {
    // An empty (or comment-only, or null) file sets nothing: all defaults, with the flags laid over them.
    if (ext === ".json") return (JSON.parse(text) as unknown) ?? {};
    if (ext === ".yaml" || ext === ".yml") return (parseYaml(text) as unknown) ?? {};
  } catch (err) {
    throw new Error(`${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  throw new Error(`${path}: config files must end in .yaml, .yml or .json`);
}

/** A flag value as the schema expects it: numbers as numbers, anything else untouched (the schema reports it). */
export function flagValue(value: string): number | string {
  const n = Number(value);
  return value.trim() !== "" && Number.isFinite(n) ? n : value;
}

/**
 * Sets `value` at a dotted path ("loop.rho") in a plain object, creating missing sections. A section that is there
 * but is not an object (`loop: 5`) is left as it is, so that the schema reports it rather than the flag hiding it.
 */
export function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (next === undefined || next === null) node[key] = {}; // `loop:` with nothing under it is an empty section
    else if (typeof next !== "object" || Array.isArray(next)) return;
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1] as string] = value;
}

/** A copy of `base` (an object, or nothing) with each override applied at its dotted path. */
export function withOverrides(base: unknown, overrides: ReadonlyMap<string, unknown>): unknown {
  if (overrides.size === 0) return base;
  if (base !== undefined && (typeof base !== "object" || base === null || Array.isArray(base))) return base;
  const copy = structuredClone((base ?? {}) as Record<string, unknown>);
  for (const [path, value] of overrides) setPath(copy, path, value);
  return copy;
}
