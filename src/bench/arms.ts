// `optune bench`: OPTune against uniform sampling and full regeneration on one task, model and budget.
//
// Main arms: all (online DPO, every prompt regenerated), uniform at rho, optune at rho; each with dpo and wdpo.
// Ablations: optune with each selection statistic, and optune + wdpo with each weight function. Every arm runs
// the same base config (the run schema's defaults, a --config file, the preset's overrides) and differs only in
// loop.strategy, loop.statistic, loss.type and loss.weightFn; arms with equal settings share runs.
//
// Runs go seed by seed, every arm within a seed, so a change of machine load over the bench spreads over all
// arms instead of landing on one. Each run's models are deleted when it ends; its config.json and metrics.jsonl
// stay under <out>/runs/.

import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { availableParallelism, cpus, loadavg } from "node:os";
import { join } from "node:path";

import { withOverrides } from "../cli/config_file.js";
import { type Config, loadConfig } from "../config/schema.js";
import { userTaskOptions } from "../data/user_config.js";
import { createUserTask } from "../data/user_task.js";
import type { IterationMetrics } from "../loop/metrics.js";
import { runLoop } from "../loop/run.js";
import { runDirStatus } from "../loop/run_dir.js";
import { createBuiltinTask } from "../tasks/builtin/task.js";
import type { Task } from "../tasks/task.js";
import { silentReporter, type Reporter } from "../util/reporter.js";
import { aggregateBench, type ArmRuns, type BenchAggregate, type GoldKind } from "./aggregate.js";
import { PLOT_PNG, writePlot } from "./plot.js";
import { outputPaths, writeReports } from "./report.js";

export type Strategy = Config["loop"]["strategy"];
export type Statistic = Config["loop"]["statistic"];
export type LossType = Config["loss"]["type"];
export type WeightFn = Config["loss"]["weightFn"];

export interface ArmSettings {
  strategy: Strategy;
  loss: LossType;
  statistic: Statistic;
  weightFn: WeightFn;
}

export interface Arm {
  id: string;
  group: "main" | "statistic" | "weightFn";
  settings: ArmSettings;
  seeds: number[];
}

export const BASELINE_ARM = "all+dpo";
const STRATEGIES: readonly Strategy[] = ["all", "uniform", "optune"];
const MAIN_LOSSES: readonly LossType[] = ["dpo", "wdpo"];
const STATISTICS: readonly Statistic[] = ["chosen", "mean", "gap", "zscore"];
const WEIGHT_FNS: readonly WeightFn[] = ["linear", "exp", "sigmoid"];

/** A preset: config overrides (dotted path -> value) laid over the base config, and how many seeds to run. */
export interface BenchPreset {
  name: string;
  overrides: ReadonlyArray<readonly [path: string, value: unknown]>;
  seeds: number;
  /** Seeds of the ablation arms (fewer: they are many); 0 skips the ablations. */
  ablationSeeds: number;
}

// The presets, and the only place bench settings differ from a plain `optune run`.
// default: the run schema's defaults (the built-in task as `optune run` runs it).
// quick:   the CI smoke test, about 75 s on 2 cores from a cold cache (bench/RESULTS.md): the models prepared
//          from 1000 instead of 3000 train prompts (the default prepare alone takes minutes), 64 pool prompts,
//          3 iterations, 60 eval prompts, 2 seeds, ablations on 1 seed.
export const PRESETS = {
  default: { name: "default", overrides: [], seeds: 5, ablationSeeds: 3 },
  quick: {
    name: "quick",
    overrides: [
      ["prepare.trainPrompts", 1000],
      ["loop.prompts", 64],
      ["loop.iterations", 3],
      ["eval.prompts", 60],
    ],
    seeds: 2,
    ablationSeeds: 1,
  },
} as const satisfies Record<string, BenchPreset>;

/** Applied to every bench run: the bench needs metrics, not checkpoints (writing them is not timed anyway). */
const BENCH_RUN_OVERRIDES: ReadonlyArray<readonly [string, unknown]> = [["run.checkpointEvery", 0]];

function seedList(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

function runKey(s: ArmSettings): string {
  return `${s.strategy}-${s.loss}-${s.statistic}-${s.weightFn}`;
}

/** The main arms and the ablation arms for a resolved base config. */
export function benchArms(base: Config, seeds: readonly number[], ablationSeeds: readonly number[]): Arm[] {
  const defaults = { statistic: base.loop.statistic, weightFn: base.loss.weightFn };
  const arms: Arm[] = [];
  for (const strategy of STRATEGIES) {
    for (const loss of MAIN_LOSSES) {
      arms.push({ id: `${strategy}+${loss}`, group: "main", settings: { strategy, loss, ...defaults }, seeds: [...seeds] });
    }
  }
  if (ablationSeeds.length === 0) return arms;
  for (const statistic of STATISTICS) {
    arms.push({
      id: `optune+${base.loss.type} statistic=${statistic}`,
      group: "statistic",
      settings: { strategy: "optune", loss: base.loss.type, statistic, weightFn: base.loss.weightFn },
      seeds: [...ablationSeeds],
    });
  }
  for (const weightFn of WEIGHT_FNS) {
    arms.push({
      id: `optune+wdpo weightFn=${weightFn}`,
      group: "weightFn",
      settings: { strategy: "optune", loss: "wdpo", statistic: base.loop.statistic, weightFn },
      seeds: [...ablationSeeds],
    });
  }
  return arms;
}

function armOverrides(settings: ArmSettings, seed: number, runDir: string): [string, unknown][] {
  return [
    ["loop.strategy", settings.strategy],
    ["loop.statistic", settings.statistic],
    ["loss.type", settings.loss],
    ["loss.weightFn", settings.weightFn],
    ["seed", seed],
    ["run.dir", runDir],
  ];
}

export interface BenchOptions {
  /** The raw run config (a --config file's contents, or {} for the defaults). */
  base: unknown;
  preset: BenchPreset;
  /** Further overrides after the preset's (bench-level settings from flags: rho, k, iterations, ...). */
  overrides?: ReadonlyArray<readonly [string, unknown]>;
  /** Replace the preset's seed counts. */
  seeds?: number;
  ablationSeeds?: number;
  gold?: GoldKind;
  /** The bench directory; must not hold a bench yet. */
  out: string;
  reporter?: Reporter;
  /** Where a user task's relative paths start (the config file's folder; default: the working directory). */
  baseDir?: string;
  /** How a run's task is made (default: as `optune run` makes it: the built-in task, or the user task). */
  createTask?: (config: Config, reporter: Reporter) => Promise<Task>;
}

function taskMaker(baseDir: string): (config: Config, reporter: Reporter) => Promise<Task> {
  return async (config, reporter) =>
    config.task === "user" ? createUserTask(userTaskOptions(config, baseDir)) : createBuiltinTask(config, reporter);
}

export interface RunRecord {
  key: string;
  settings: ArmSettings;
  seed: number;
  runDir: string;
  metrics: IterationMetrics[];
}

export interface BenchMachine {
  cpus: number;
  cpuModel: string;
  node: string;
  /** 1-minute load average when the bench started and ended (others may share the machine). */
  loadStart: number;
  loadEnd: number;
}

export interface BenchResult {
  version: 1;
  preset: string;
  createdAt: string;
  /** The checkout the bench ran from (null outside a git checkout); dirty: it had uncommitted changes. */
  git: { commit: string; dirty: boolean } | null;
  benchSeconds: number;
  machine: BenchMachine;
  /** The resolved base config of every arm (arms change only strategy, statistic, loss type, weightFn, seed, dir). */
  config: Config;
  /** Each arm with the key of its runs in `runs`. */
  arms: (Arm & { runKey: string })[];
  aggregate: BenchAggregate;
  runs: RunRecord[];
  outputs: { json: string; markdown: string; plot: string };
}

function gitState(): BenchResult["git"] {
  try {
    const run = (args: string[]) => execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return { commit: run(["rev-parse", "HEAD"]), dirty: run(["status", "--porcelain", "--untracked-files=no"]) !== "" };
  } catch {
    return null;
  }
}

function baseConfig(options: BenchOptions): { raw: unknown; config: Config } {
  const overrides = new Map<string, unknown>([...options.preset.overrides, ...(options.overrides ?? []), ...BENCH_RUN_OVERRIDES]);
  const raw = withOverrides(options.base ?? {}, overrides);
  return { raw, config: loadConfig(raw) };
}

/** Runs every arm over its seeds and writes results.json, results.md and the plot to options.out. */
export async function runBench(options: BenchOptions): Promise<BenchResult> {
  if (runDirStatus(options.out).kind !== "free") throw new Error(`${options.out} is not empty: choose another bench directory`);
  const reporter = options.reporter ?? silentReporter;
  const createTask = options.createTask ?? taskMaker(options.baseDir ?? process.cwd());
  const started = performance.now();
  const loadStart = loadavg()[0] as number;
  const { raw, config } = baseConfig(options);
  const seeds = seedList(options.seeds ?? options.preset.seeds);
  const ablationSeeds = seedList(options.ablationSeeds ?? options.preset.ablationSeeds);
  if (seeds.length < 1) throw new Error("bench: at least one seed is needed");
  const arms = benchArms(config, seeds, ablationSeeds);

  // The unique (settings, seed) runs, seed by seed; each config is checked before anything runs.
  const todo: { key: string; settings: ArmSettings; seed: number; config: Config }[] = [];
  const allSeeds = [...new Set([...seeds, ...ablationSeeds])].sort((a, b) => a - b);
  for (const seed of allSeeds) {
    for (const arm of arms) {
      const key = runKey(arm.settings);
      if (!arm.seeds.includes(seed) || todo.some((r) => r.key === key && r.seed === seed)) continue;
      const runDir = join(options.out, "runs", key, `seed-${seed}`);
      todo.push({ key, settings: arm.settings, seed, config: loadConfig(withOverrides(raw, new Map(armOverrides(arm.settings, seed, runDir)))) });
    }
  }

  const runs: RunRecord[] = [];
  for (const [i, item] of todo.entries()) {
    const task = await createTask(item.config, reporter);
    const runStarted = performance.now();
    const result = await runLoop({ config: item.config, task });
    const last = result.metrics[result.metrics.length - 1] as IterationMetrics;
    // Only the metrics are needed; the models would take megabytes per run.
    rmSync(join(result.runDir, "checkpoints"), { recursive: true, force: true });
    rmSync(join(result.runDir, "state"), { recursive: true, force: true });
    runs.push({ key: item.key, settings: item.settings, seed: item.seed, runDir: result.runDir, metrics: result.metrics });
    reporter.line(
      `[${i + 1}/${todo.length}] ${item.key} seed ${item.seed}: gold sampled ${last.gold.sampled.toFixed(3)}, ` +
        `greedy ${last.gold.greedy.toFixed(3)}, ${((performance.now() - runStarted) / 1000).toFixed(1)}s`,
    );
  }

  const armRuns: ArmRuns[] = arms.map((arm) => ({
    id: arm.id,
    runs: arm.seeds.map((seed) => {
      const run = runs.find((r) => r.key === runKey(arm.settings) && r.seed === seed) as RunRecord;
      return { seed, metrics: run.metrics };
    }),
  }));
  const aggregate = aggregateBench(armRuns, BASELINE_ARM, options.gold ?? "sampled");
  const cpuList = cpus();
  const result: BenchResult = {
    version: 1,
    preset: options.preset.name,
    createdAt: new Date().toISOString(),
    git: gitState(),
    benchSeconds: (performance.now() - started) / 1000,
    machine: {
      cpus: availableParallelism(),
      cpuModel: cpuList[0]?.model ?? "unknown",
      node: process.version,
      loadStart,
      loadEnd: loadavg()[0] as number,
    },
    config,
    arms: arms.map((arm) => ({ ...arm, runKey: runKey(arm.settings) })),
    aggregate,
    runs,
    outputs: { ...outputPaths(options.out), plot: join(options.out, PLOT_PNG) },
  };
  await writePlot(result, result.outputs.plot);
  writeReports(result);
  return result;
}
