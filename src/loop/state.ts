// The run state saved after every completed iteration, from which --resume continues:
//
//   <run>/state/latest.json          {"iteration": t, "dir": "iter-000t"}, replaced atomically last
//   <run>/state/iter-000t/state.json  iteration counter, pool (pairs with cached reference log-probs), the starting
//                                     policy's eval rewards (for win rates)
//   <run>/state/iter-000t/policy/     the policy after iteration t (HF checkpoint; with LoRA only policy/adapter/)
//   <run>/state/iter-000t/reference/  the reference model, only when it is refreshed (else it is the start policy)
//   <run>/state/iter-000t/optimizer.safetensors  the policy's AdamW moments and step count
//
// A state directory is complete before latest.json points at it (every file in it is itself written to a temp
// name, fsynced and renamed), so a SIGKILL at any moment leaves the previous state or the new one usable. The
// random state needs no saving: every draw derives from (seed, iteration) (see seeds.ts), so restoring the
// iteration counter restores the random streams. What a killed save leaves behind (temp files, a half-written
// state directory, a checkpoint's temp directory) is removed by removeLeftovers when the run is resumed.
//
// A run resumes only under the config it was started with, except for RESUMABLE_CHANGES (checkResumeConfig).

import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

import { z } from "zod";

import { type Config, ConfigError, loadConfig } from "../config/schema.js";
import type { EngineModel } from "../engine/index.js";
import { writeJsonAtomic } from "../util/atomic.js";
import type { Task } from "../tasks/task.js";
import type { EvalResult } from "./evaluate.js";
import { createPool, type Pool, type PromptPair } from "./pool.js";

const STATE_VERSION = 1;

export interface RunState {
  /** Last completed iteration (0: only the starting policy was evaluated). */
  iteration: number;
  pool: Pool;
  /** The starting policy's eval rewards; win rates compare against them. */
  initialEval: Pick<EvalResult, "greedy" | "sampled">;
  /**
   * Fingerprint (EngineModel.fingerprint) of the reference the run started with; a resume that reloads it from its
   * files checks it. Absent in states saved before it was recorded.
   */
  referenceWeights?: string;
  /**
   * Fingerprint (promptsFingerprint) of the task's encoded train and eval prompts; a resume checks it, since the
   * pool's cached pairs and reference log-probs were computed on those ids. Absent in older states.
   */
  promptIds?: string;
}

/**
 * A fingerprint of a task's prompts as token ids (train then eval, each with its id): what the run state's cached
 * pairs and reference log-probs depend on. A chat template that writes today's date (Llama 3.2 / 3.3) changes it.
 */
export function promptsFingerprint(task: Pick<Task, "trainPrompts" | "evalPrompts">): string {
  const hash = createHash("sha256");
  for (const list of [task.trainPrompts, task.evalPrompts]) {
    hash.update(`${list.length};`);
    for (const p of list) hash.update(`${p.id}:${Array.from(p.ids).join(",")};`);
  }
  return hash.digest("hex").slice(0, 16);
}

interface SavedPair extends Omit<PromptPair, "chosenIds" | "rejectedIds"> {
  chosenIds: number[];
  rejectedIds: number[];
}

interface SavedState {
  version: number;
  iteration: number;
  pool: { promptId: number; history: number[]; pair: SavedPair | null }[];
  initialEval: Pick<EvalResult, "greedy" | "sampled">;
  referenceWeights?: string;
  promptIds?: string;
}

interface LatestPointer {
  iteration: number;
  dir: string;
}

// The shapes a saved state must have to be resumed; a file that parses but has another shape was changed outside
// optune, and is refused before anything in the run directory is touched.
const iterationNumber = z.number().int().min(0);
const tokenIds = z.array(z.number().int().min(0));
// Loose: a pair field this check does not name (added to PromptPair later) is kept, not stripped.
const SavedPairSchema = z.looseObject({
  chosenIds: tokenIds,
  rejectedIds: tokenIds,
  rewardChosen: z.number(),
  rewardRejected: z.number(),
  refLogpChosen: z.number(),
  refLogpRejected: z.number(),
  iteration: iterationNumber,
  allRewards: z.array(z.number()),
  trainable: z.boolean(),
});
const SavedStateSchema = z.object({
  version: z.literal(STATE_VERSION),
  iteration: iterationNumber,
  pool: z.array(
    z.object({ promptId: z.number().int(), history: z.array(z.number()), pair: SavedPairSchema.nullable() }),
  ),
  initialEval: z.object({ greedy: z.array(z.number()), sampled: z.array(z.array(z.number())) }),
  referenceWeights: z.string().optional(),
  promptIds: z.string().optional(),
});
const LatestPointerSchema = z
  .object({ iteration: iterationNumber, dir: z.string() })
  .refine((p) => p.dir === iterationDirName(p.iteration), { message: "dir must name the iteration's state directory" });

/** `value` read from `path`, checked against `schema`; another shape means the file was changed outside optune. */
function checkedRunJson<T>(path: string, value: unknown, schema: z.ZodType<T>): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const where = issue.path.length > 0 ? issue.path.join(".") : "the file";
  throw new Error(
    `${path}: not a saved run state (${where}: ${issue.message}); optune writes it atomically, so it was changed by ` +
      "something else. Start a new run (--overwrite, or another --out directory)",
  );
}

function stateRoot(runDir: string): string {
  return join(runDir, "state");
}

function iterationDirName(iteration: number): string {
  return `iter-${String(iteration).padStart(4, "0")}`;
}

function serializePool(pool: Pool): SavedState["pool"] {
  return [...pool.entries.values()]
    .sort((a, b) => a.promptId - b.promptId)
    .map((entry) => ({
      promptId: entry.promptId,
      history: entry.history,
      pair:
        entry.pair === null
          ? null
          : { ...entry.pair, chosenIds: Array.from(entry.pair.chosenIds), rejectedIds: Array.from(entry.pair.rejectedIds) },
    }));
}

function deserializePool(saved: SavedState["pool"]): Pool {
  const pool = createPool(saved.map((e) => e.promptId));
  for (const e of saved) {
    const entry = pool.entries.get(e.promptId)!;
    entry.history = e.history.slice();
    entry.pair =
      e.pair === null
        ? null
        : { ...e.pair, chosenIds: Int32Array.from(e.pair.chosenIds), rejectedIds: Int32Array.from(e.pair.rejectedIds) };
  }
  return pool;
}

export interface StateModels {
  policy: EngineModel;
  /** Saved only when it is not the starting policy (refreshed reference). */
  reference: EngineModel | null;
}

/** Saves the state of a completed iteration and makes it the one --resume uses; removes the previous one. */
export async function saveRunState(runDir: string, state: RunState, models: StateModels): Promise<void> {
  const root = stateRoot(runDir);
  const name = iterationDirName(state.iteration);
  const dir = join(root, name);
  rmSync(dir, { recursive: true, force: true });
  // A LoRA policy's state is its adapters: a resume reloads the frozen base from the run's starting policy.
  if (models.policy.lora !== null) await models.policy.saveLoraAdapter(join(dir, "policy", "adapter"));
  else await models.policy.save(join(dir, "policy"));
  if (models.reference !== null) await models.reference.save(join(dir, "reference"));
  // AdamW moments too, so a resumed run takes exactly the steps an unbroken one would.
  await models.policy.saveOptimizerState(dir);
  const saved: SavedState = {
    version: STATE_VERSION,
    iteration: state.iteration,
    pool: serializePool(state.pool),
    initialEval: state.initialEval,
    ...(state.referenceWeights === undefined ? {} : { referenceWeights: state.referenceWeights }),
    ...(state.promptIds === undefined ? {} : { promptIds: state.promptIds }),
  };
  writeJsonAtomic(join(dir, "state.json"), saved);

  const previous = readPointer(runDir);
  writeJsonAtomic(join(root, "latest.json"), { iteration: state.iteration, dir: name } satisfies LatestPointer);
  if (previous !== null && previous.dir !== name) rmSync(join(root, previous.dir), { recursive: true, force: true });
}

/** Parses a JSON file of the run directory; a file that does not parse was changed outside optune. */
export function readRunJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as unknown;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(
      `${path}: cannot read the saved run (${reason}); optune writes it atomically, so it was changed by something ` +
        "else. Start a new run (--overwrite, or another --out directory)",
      { cause: err },
    );
  }
}

function readPointer(runDir: string): LatestPointer | null {
  const path = join(stateRoot(runDir), "latest.json");
  if (!existsSync(path)) return null;
  const pointer = checkedRunJson(path, readRunJson(path), LatestPointerSchema);
  const statePath = join(stateRoot(runDir), pointer.dir, "state.json");
  if (!existsSync(statePath)) {
    throw new Error(
      `${path} points at ${statePath}, which does not exist; optune writes the state before the pointer, so it was ` +
        "changed by something else. Start a new run (--overwrite, or another --out directory)",
    );
  }
  return pointer;
}

export interface LoadedState {
  state: RunState;
  policyDir: string;
  /** Set when the reference was refreshed during the run. */
  referenceDir: string | null;
  /** Restores the saved AdamW moments into the policy (loaded from policyDir). */
  restoreOptimizer(policy: EngineModel): Promise<void>;
}

/** The state of the last completed iteration, or null when the run has none. */
export function loadRunState(runDir: string): LoadedState | null {
  const pointer = readPointer(runDir);
  if (pointer === null) return null;
  const dir = join(stateRoot(runDir), pointer.dir);
  const path = join(dir, "state.json");
  const raw = readRunJson(path);
  const version = (raw as { version?: unknown } | null)?.version;
  if (version !== STATE_VERSION) {
    throw new Error(`${path}: run state version ${String(version)}, expected ${STATE_VERSION}`);
  }
  const saved: SavedState = checkedRunJson(path, raw, SavedStateSchema);
  if (saved.iteration !== pointer.iteration) {
    throw new Error(
      `${path}: iteration ${saved.iteration}, but latest.json says ${pointer.iteration}; the run directory was ` +
        "changed by something else. Start a new run (--overwrite, or another --out directory)",
    );
  }
  const referenceDir = join(dir, "reference");
  return {
    state: {
      iteration: saved.iteration,
      pool: deserializePool(saved.pool),
      initialEval: saved.initialEval,
      ...(saved.referenceWeights === undefined ? {} : { referenceWeights: saved.referenceWeights }),
      ...(saved.promptIds === undefined ? {} : { promptIds: saved.promptIds }),
    },
    policyDir: join(dir, "policy"),
    referenceDir: existsSync(referenceDir) ? referenceDir : null,
    restoreOptimizer: (policy) => policy.loadOptimizerState(dir),
  };
}

// What a killed writer leaves: atomic.ts temp files (".<name>.<pid>.tmp") and checkpoints.ts temp directories
// ("<name>.tmp-<pid>", and "<name>.old-<pid>" for one being replaced).
const ATOMIC_TEMP = /^\..+\.\d+\.tmp$/;
const CHECKPOINT_TEMP = /^(.+)\.tmp-\d+$/;
const CHECKPOINT_OLD = /^(.+)\.old-\d+$/;

/** True for a temp file that a killed atomic write left behind (never a file of a completed write). */
export function isTempLeftover(name: string): boolean {
  return ATOMIC_TEMP.test(name);
}

function entries(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir) : [];
}

/**
 * Removes what an interrupted save left in the run directory: temp files, state directories latest.json does not
 * point at, and checkpoint temp directories. A checkpoint caught mid-replacement (only its ".old-" copy left) is
 * put back under its name. Only for a run directory no other process is writing.
 */
export function removeLeftovers(runDir: string): void {
  const pointer = readPointer(runDir);
  const root = stateRoot(runDir);
  for (const dir of [runDir, root]) {
    for (const name of entries(dir)) if (isTempLeftover(name)) rmSync(join(dir, name), { force: true });
  }
  for (const name of entries(root)) {
    if (name.startsWith("iter-") && name !== pointer?.dir) rmSync(join(root, name), { recursive: true, force: true });
  }
  const checkpoints = join(runDir, "checkpoints");
  for (const name of entries(checkpoints)) {
    const path = join(checkpoints, name);
    const old = CHECKPOINT_OLD.exec(name);
    if (old !== null && !existsSync(join(checkpoints, old[1]!))) renameSync(path, join(checkpoints, old[1]!));
    else if (old !== null || CHECKPOINT_TEMP.test(name)) rmSync(path, { recursive: true, force: true });
  }
}

/**
 * Config fields a resumed run may change, and why each is safe: none of them changes what the saved iterations
 * computed or what the saved state means.
 */
export const RESUMABLE_CHANGES: ReadonlyArray<readonly [field: string, why: string]> = [
  ["loop.iterations", "extends (or shortens) the run"],
  ["run.dir", "the run directory may have been moved"],
  ["run.checkpointEvery", "only decides which iterations also get a checkpoint"],
  ["run.cacheDir", "prepared models are keyed by the prepare settings, which must match"],
  ["optim.skipNonFinite", "how to go on after a refused step, e.g. after a run stopped on one"],
  ["device", "where it runs; another device may differ in the last bits"],
  ["precision", "the matmul precision (CPU or GPU); like a device change, results differ numerically, not in meaning"],
];

/** Leaf fields of a config as dotted paths; arrays are leaves (compared whole). */
function flatten(value: unknown, prefix: string, out: Map<string, unknown>): Map<string, unknown> {
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    for (const [key, child] of Object.entries(value)) flatten(child, prefix === "" ? key : `${prefix}.${key}`, out);
  } else if (value !== undefined) {
    out.set(prefix, value);
  }
  return out;
}

function show(value: unknown): string {
  return value === undefined ? "(unset)" : JSON.stringify(value);
}

/** The fields, outside RESUMABLE_CHANGES, whose values differ between two configs: "path (saved -> new)". */
export function resumeConfigDifferences(saved: Config, config: Config): string[] {
  const allowed = new Set(RESUMABLE_CHANGES.map(([field]) => field));
  const a = flatten(saved, "", new Map());
  const b = flatten(config, "", new Map());
  const fields = [...new Set([...a.keys(), ...b.keys()])].filter((f) => !allowed.has(f)).sort();
  return fields
    .filter((f) => JSON.stringify(a.get(f)) !== JSON.stringify(b.get(f)))
    .map((f) => `${f} (${show(a.get(f))} -> ${show(b.get(f))})`);
}

/**
 * Refuses to resume `runDir` under a config that differs from the one it was run with (its config.json) in a
 * field outside RESUMABLE_CHANGES: the saved pool, weights and random streams belong to that config. Nothing to
 * check when the directory has no saved config yet.
 */
export function checkResumeConfig(runDir: string, config: Config, configFile = "config.json"): void {
  const path = join(runDir, configFile);
  if (!existsSync(path)) return;
  let saved: Config;
  try {
    saved = loadConfig(readRunJson(path));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new Error(`cannot resume ${runDir}: its saved ${path} is not a valid config now: ${err.message}`, { cause: err });
  }
  const differences = resumeConfigDifferences(saved, config);
  if (differences.length === 0) return;
  throw new Error(
    `cannot resume ${runDir}: it was run with a different config (${path}); saved -> new:\n` +
      differences.map((d) => `  ${d}\n`).join("") +
      `A resumed run keeps its config except ${RESUMABLE_CHANGES.map(([f]) => f).join(", ")}. ` +
      "To run the new config, start a new run: another --out directory, or --overwrite to replace this one",
  );
}
