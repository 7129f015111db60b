// Model checkpoints of a run (Hugging Face directories), written whole or not at all: the model is saved into a
// temporary sibling directory that is then renamed into place.

import { existsSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

import type { EngineModel } from "../engine/index.js";

export function checkpointDir(runDir: string, name: string): string {
  return join(runDir, "checkpoints", name);
}

export function iterationCheckpointName(iteration: number): string {
  return `iter-${String(iteration).padStart(4, "0")}`;
}

/** Saves `model` to `dir`, replacing what was there. */
export async function saveCheckpoint(model: EngineModel, dir: string): Promise<void> {
  const temp = `${dir}.tmp-${process.pid}`;
  rmSync(temp, { recursive: true, force: true });
  await model.save(temp);
  if (existsSync(dir)) {
    const old = `${dir}.old-${process.pid}`;
    renameSync(dir, old);
    renameSync(temp, dir);
    rmSync(old, { recursive: true, force: true });
  } else {
    renameSync(temp, dir);
  }
}
