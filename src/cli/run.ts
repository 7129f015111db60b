// `optune run`: the online loop on the built-in task, or on the user's own model, prompts and rewards with
// `task: user`, configured by an optional YAML/JSON file plus flags for the common fields. `--resume` continues a
// run from its saved config and state.

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

import { Command } from "commander";

import { type Config, ConfigError, loadConfig } from "../config/schema.js";
import { userTaskOptions, withAbsoluteUserPaths } from "../data/user_config.js";
import { createUserTask } from "../data/user_task.js";
import { checkpointDir, completeCheckpoint, iterationCheckpointName } from "../loop/checkpoints.js";
import { runLoop } from "../loop/run.js";
import {
  CONFIG_FILE,
  checkReplaceable,
  clearRunDir,
  existingPaths,
  foreignRunDirError,
  runDirStatus,
} from "../loop/run_dir.js";
import { readRunJson } from "../loop/state.js";
import { createBuiltinTask } from "../tasks/builtin/task.js";
import type { Task } from "../tasks/task.js";
import type { Reporter } from "../util/reporter.js";
import { flagValue, readConfigFile, withOverrides } from "./config_file.js";
import { terminalReporter } from "./progress.js";
import { summaryTable } from "./summary.js";

interface RunFlags {
  config?: string;
  out?: string;
  resume?: boolean;
  overwrite?: boolean;
  [flag: string]: string | boolean | undefined;
}

/** Flags that set one config field each: flag name (commander's camelCase) -> dotted config path. */
const FIELD_FLAGS: ReadonlyArray<readonly [flag: string, usage: string, path: string, help: string]> = [
  ["iterations", "--iterations <n>", "loop.iterations", "online iterations"],
  ["prompts", "--prompts <n>", "loop.prompts", "training prompts in the pool"],
  ["rho", "--rho <x>", "loop.rho", "fraction of prompts regenerated per iteration after the first"],
  ["strategy", "--strategy <name>", "loop.strategy", "optune | uniform | all"],
  ["statistic", "--statistic <name>", "loop.statistic", "chosen | mean | gap | zscore"],
  ["k", "--k <n>", "loop.k", "responses sampled per regenerated prompt"],
  ["loss", "--loss <type>", "loss.type", "dpo | ipo | wdpo | hinge | simpo"],
  ["beta", "--beta <x>", "loss.beta", "KL strength"],
  ["lr", "--lr <x>", "optim.lr", "learning rate"],
  ["reward", "--reward <source>", "reward.source", "built-in task: model (learned proxy) | gold (the task's own reward)"],
  ["seed", "--seed <n>", "seed", "run seed"],
  ["device", "--device <name>", "device", "cpu | cuda | auto: where the policy, reference and reward model run"],
  ["precision", "--precision <p>", "precision", "fp32 | bf16 (bf16 matmuls; see README)"],
  ["loraRank", "--lora-rank <n>", "model.lora.rank", "train LoRA adapters of this rank over frozen weights (see README)"],
];

function fieldOverrides(flags: RunFlags): Map<string, unknown> {
  const overrides = new Map<string, unknown>();
  for (const [flag, , path] of FIELD_FLAGS) {
    const value = flags[flag];
    if (typeof value === "string") overrides.set(path, flagValue(value));
  }
  if (flags.out !== undefined) overrides.set("run.dir", flags.out);
  return overrides;
}

/**
 * The config of a new run: file, then flags, then the schema's defaults. A user task's model, prompt and reward
 * paths are relative to the config file's folder (the working directory without one); they are made absolute
 * here, so the config saved in the run directory still finds them on --resume.
 */
function newRunConfig(flags: RunFlags): Config {
  const base = flags.config === undefined ? {} : readConfigFile(flags.config);
  const config = loadConfig(withOverrides(base, fieldOverrides(flags)));
  if (config.task !== "user") return config;
  return withAbsoluteUserPaths(config, flags.config === undefined ? process.cwd() : dirname(resolve(flags.config)));
}

async function createTask(config: Config, reporter: Reporter): Promise<Task> {
  // newRunConfig made the paths absolute, so the base directory no longer matters.
  if (config.task === "user") return createUserTask(userTaskOptions(config, process.cwd()));
  return createBuiltinTask(config, reporter);
}

/** The saved config of the run being resumed; only --iterations may change it (to extend the run). */
function resumedRunConfig(flags: RunFlags): Config {
  const overrides = fieldOverrides(flags);
  const dir = flags.out ?? newRunConfig({ ...flags, out: undefined }).run.dir;
  const path = join(dir, CONFIG_FILE);
  if (!existsSync(path)) throw new Error(`nothing to resume: ${path} does not exist`);
  const changed = [...overrides.keys()].filter((p) => p !== "loop.iterations" && p !== "run.dir");
  if (changed.length > 0 || flags.config !== undefined) {
    throw new Error(`--resume continues with the run's saved config; only --iterations may change (got ${[...changed, ...(flags.config ? ["--config"] : [])].join(", ")})`);
  }
  const saved = readRunJson(path);
  // The run is where it is now (it may have been copied or moved), whatever its saved config says.
  const resumed = new Map<string, unknown>([["run.dir", dir]]);
  const iterations = overrides.get("loop.iterations");
  if (iterations !== undefined) resumed.set("loop.iterations", iterations);
  try {
    return loadConfig(withOverrides(saved, resumed));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new Error(`${path} (the saved config of the run being resumed): ${err.message}`, { cause: err });
  }
}

/**
 * Where a new run may go, checked before its task is made (the built-in task may take a minute to prepare): never
 * into a folder holding files optune does not write; over a run only with --overwrite, and not while the run
 * directory holds the working directory or anything the new run reads (its config file, models, prompts, reward
 * modules). An overwritten directory is emptied only once the new run's task has been created.
 */
function checkNewRunDir(config: Config, overwrite: boolean, configFile: string | undefined): void {
  const dir = config.run.dir;
  const status = runDirStatus(dir);
  if (status.kind === "foreign") throw foreignRunDirError(dir, status.entries);
  if (status.kind === "run" && !overwrite) {
    throw new Error(`${dir} already holds a run: pass --resume to continue it, --overwrite to replace it, or --out <dir>`);
  }
  if (overwrite && status.kind !== "free") {
    const reads = existingPaths(config, new Set(["run.dir"]));
    checkReplaceable(dir, configFile === undefined ? reads : [...reads, configFile]);
  }
}

export function runCommand(): Command {
  const command = new Command("run")
    .description("run online preference tuning (OPTune) on the built-in task, or the task in --config")
    .option("-c, --config <file>", "run config (.yaml, .yml or .json); flags override its fields")
    .option("-o, --out <dir>", "run directory (config run.dir)")
    .option("--resume", "continue the run in the run directory from its last completed iteration")
    .option("--overwrite", "replace a run already in the run directory");
  for (const [, usage, , help] of FIELD_FLAGS) command.option(usage, help);

  return command.action(async function (this: Command, flags: RunFlags) {
    const resume = flags.resume === true;
    const config = resume ? resumedRunConfig(flags) : newRunConfig(flags);
    const overwrite = !resume && flags.overwrite === true;
    if (!resume) checkNewRunDir(config, overwrite, flags.config);

    const reporter = terminalReporter();
    let stopRequested = false;
    const onInterrupt = () => {
      if (stopRequested) process.exit(130);
      stopRequested = true;
      reporter.line("interrupt: finishing the current step, then stopping (Ctrl-C again to quit at once)");
    };
    process.on("SIGINT", onInterrupt);
    try {
      const started = performance.now();
      const task = await createTask(config, reporter);
      if (overwrite) clearRunDir(config.run.dir);
      // Each saved checkpoint gets the task's extra files (a user task's tokenizer) as soon as it is written.
      const onIteration = ({ iteration }: { iteration: number }) => {
        const dir = checkpointDir(config.run.dir, iterationCheckpointName(iteration));
        if (iteration > 0 && existsSync(dir)) completeCheckpoint(task, dir);
      };
      const result = await runLoop({ config, task, resume, reporter, onIteration, shouldStop: () => stopRequested });
      if (result.finalCheckpoint !== null) completeCheckpoint(task, result.finalCheckpoint);
      console.log(summaryTable(result.metrics));
      const elapsed = ((performance.now() - started) / 1000).toFixed(1);
      if (result.status === "interrupted") {
        this.error(
          `interrupted; iterations up to ${result.lastIteration} are saved in ${result.runDir} (continue with --resume)`,
          { exitCode: 130, code: "optune.interrupted" },
        );
      }
      console.log(`done in ${elapsed}s: ${result.runDir} (final checkpoint ${result.finalCheckpoint})`);
      // the built-in task's checkpoints carry its tokenizer and chat template: a held-out prompt, answered
      const example = task.name === "builtin" ? task.evalPrompts[0] : undefined;
      if (result.finalCheckpoint !== null && example !== undefined) {
        console.log(`try it: npx optune generate --model ${result.finalCheckpoint} --prompt "${example.text}" --chat`);
      }
    } finally {
      process.off("SIGINT", onInterrupt);
    }
  });
}
