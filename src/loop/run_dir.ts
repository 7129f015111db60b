// What a run directory holds, and replacing it safely. A run directory holds only what optune writes there:
// config.json, metrics.jsonl, state/ and checkpoints/ (and temp files a killed write left). Anything else means the
// folder is not a run directory (a project, a home folder, a model), so optune never writes into it and never
// deletes it, even with --overwrite.

import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { isAbsolute, join, relative, resolve } from "node:path";

import { isTempLeftover } from "./state.js";

export const CONFIG_FILE = "config.json";
export const METRICS_FILE = "metrics.jsonl";
/** Every entry optune writes into a run directory. */
export const RUN_ENTRIES: readonly string[] = [CONFIG_FILE, METRICS_FILE, "state", "checkpoints"];

export type RunDirStatus =
  /** Missing, empty, or only temp files: a new run may start there. */
  | { kind: "free" }
  /** optune's entries, but no completed iteration (a run that failed before iteration 0 was saved): nothing to lose. */
  | { kind: "unstarted" }
  /** A run with at least one completed iteration: resume it, or replace it with --overwrite. */
  | { kind: "run" }
  /** Holds entries optune does not write: never written into, never replaced. */
  | { kind: "foreign"; entries: string[] };

function nonEmptyFile(path: string): boolean {
  return existsSync(path) && statSync(path).size > 0;
}

/** What `dir` holds; throws a clear error when it is a file or cannot be read. */
export function runDirStatus(dir: string): RunDirStatus {
  if (!existsSync(dir)) return { kind: "free" };
  if (!statSync(dir).isDirectory()) {
    throw new Error(`run directory ${dir} is a file, not a directory: choose another run directory (--out)`);
  }
  let names: string[];
  try {
    names = readdirSync(dir).filter((name) => !isTempLeftover(name));
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`run directory ${dir} cannot be read (${reason}): choose another run directory (--out)`, {
      cause: err,
    });
  }
  if (names.length === 0) return { kind: "free" };
  const foreign = names.filter((name) => !RUN_ENTRIES.includes(name));
  if (foreign.length > 0) return { kind: "foreign", entries: foreign.sort() };
  const saved = existsSync(join(dir, "state", "latest.json")) || existsSync(join(dir, "checkpoints"));
  return saved || nonEmptyFile(join(dir, METRICS_FILE)) ? { kind: "run" } : { kind: "unstarted" };
}

/** The error for a folder that is not a run directory. */
export function foreignRunDirError(dir: string, entries: readonly string[]): Error {
  const shown = entries.slice(0, 5).join(", ") + (entries.length > 5 ? `, ... (${entries.length} in all)` : "");
  return new Error(
    `${dir} is not an optune run directory (it holds ${shown}, which optune does not write); optune neither writes ` +
      "into nor replaces such a folder: choose an empty or new run directory (--out)",
  );
}

/** True when `inner` is `outer` or lies below it. */
function within(outer: string, inner: string): boolean {
  const rel = relative(resolve(outer), resolve(inner));
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/**
 * Refuses to replace `dir` when the work at hand needs something inside it: the working directory, or any existing
 * path among `paths` (the config file, the models, prompts and reward modules the new run reads).
 */
export function checkReplaceable(dir: string, paths: readonly string[]): void {
  if (within(dir, process.cwd())) {
    throw new Error(`--overwrite would delete ${dir}, which holds the current directory: run from elsewhere`);
  }
  for (const path of paths) {
    if (existsSync(path) && within(dir, path)) {
      throw new Error(
        `--overwrite would delete ${path}, which this run reads, with ${dir}: copy it out first, or choose another ` +
          "run directory (--out)",
      );
    }
  }
}

/** Removes optune's entries from a run directory (checked by runDirStatus first); the folder itself stays. */
export function clearRunDir(dir: string): void {
  const status = runDirStatus(dir);
  if (status.kind === "foreign") throw foreignRunDirError(dir, status.entries);
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (RUN_ENTRIES.includes(name) || isTempLeftover(name)) rmSync(join(dir, name), { recursive: true, force: true });
  }
}

/** Every string in a config (recursively) that names an existing file or folder: what a run may read. */
export function existingPaths(value: unknown, skip: ReadonlySet<string> = new Set()): string[] {
  const out: string[] = [];
  const walk = (v: unknown, key: string): void => {
    if (skip.has(key)) return;
    if (typeof v === "string") {
      if (v !== "" && existsSync(v)) out.push(resolve(v));
    } else if (Array.isArray(v)) {
      v.forEach((item, i) => walk(item, `${key}[${i}]`));
    } else if (typeof v === "object" && v !== null) {
      for (const [k, item] of Object.entries(v)) walk(item, key === "" ? k : `${key}.${k}`);
    }
  };
  walk(value, "");
  return out;
}
