// Model checkpoints of a run (Hugging Face directories), written whole or not at all: the model is saved into a
// temporary sibling directory that is then renamed into place. The task then adds what the weights alone lack
// (a user task's tokenizer files), so a checkpoint loads elsewhere as a complete model directory.

import { existsSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

import type { EngineModel } from "../engine/index.js";
import type { Task } from "../tasks/task.js";

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

/** Writes the task's extra files into the saved checkpoint `dir`; nothing when the task needs none. */
export function completeCheckpoint(task: Pick<Task, "writeCheckpointExtras">, dir: string): void {
  if (!existsSync(join(dir, "config.json"))) throw new Error(`${dir} is not a saved checkpoint (no config.json)`);
  task.writeCheckpointExtras?.(dir);
}
