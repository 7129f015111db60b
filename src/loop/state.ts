// The run state saved after every completed iteration, from which --resume continues:
//
//   <run>/state/latest.json          {"iteration": t, "dir": "iter-000t"}, replaced atomically last
//   <run>/state/iter-000t/state.json  iteration counter, pool (pairs with cached reference log-probs), the starting
//                                     policy's eval rewards (for win rates)
//   <run>/state/iter-000t/policy/     the policy after iteration t (HF checkpoint)
//   <run>/state/iter-000t/reference/  the reference model, only when it is refreshed (else it is the start policy)
//   <run>/state/iter-000t/optimizer.safetensors  the policy's AdamW moments and step count
//
// A state directory is complete before latest.json points at it, so a crash at any moment leaves the previous
// state usable. The random state needs no saving: every draw derives from (seed, iteration) (see seeds.ts).

import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";

import type { EngineModel } from "../engine/index.js";
import { writeJsonAtomic } from "../util/atomic.js";
import type { EvalResult } from "./evaluate.js";
import { createPool, type Pool, type PromptPair } from "./pool.js";

const STATE_VERSION = 1;

export interface RunState {
  /** Last completed iteration (0: only the starting policy was evaluated). */
  iteration: number;
  pool: Pool;
  /** The starting policy's eval rewards; win rates compare against them. */
  initialEval: Pick<EvalResult, "greedy" | "sampled">;
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
}

interface LatestPointer {
  iteration: number;
  dir: string;
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
  await models.policy.save(join(dir, "policy"));
  if (models.reference !== null) await models.reference.save(join(dir, "reference"));
  // AdamW moments too, so a resumed run takes exactly the steps an unbroken one would.
  await models.policy.saveOptimizerState(dir);
  const saved: SavedState = {
    version: STATE_VERSION,
    iteration: state.iteration,
    pool: serializePool(state.pool),
    initialEval: state.initialEval,
  };
  writeJsonAtomic(join(dir, "state.json"), saved);

  const previous = readPointer(runDir);
  writeJsonAtomic(join(root, "latest.json"), { iteration: state.iteration, dir: name } satisfies LatestPointer);
  if (previous !== null && previous.dir !== name) rmSync(join(root, previous.dir), { recursive: true, force: true });
}

function readPointer(runDir: string): LatestPointer | null {
  const path = join(stateRoot(runDir), "latest.json");
  if (!existsSync(path)) return null;
  return JSON.parse(readFileSync(path, "utf8")) as LatestPointer;
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
  const saved = JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as SavedState;
  if (saved.version !== STATE_VERSION) throw new Error(`${dir}: run state version ${saved.version}, expected ${STATE_VERSION}`);
  const referenceDir = join(dir, "reference");
  return {
    state: { iteration: saved.iteration, pool: deserializePool(saved.pool), initialEval: saved.initialEval },
    policyDir: join(dir, "policy"),
    referenceDir: existsSync(referenceDir) ? referenceDir : null,
    restoreOptimizer: (policy) => policy.loadOptimizerState(dir),
  };
}
