// `optune bench`: benchmarks. `bench engine` measures the engine's ops against PyTorch (src/bench/engine.ts);
// `bench` itself runs OPTune against uniform sampling and full regeneration (src/bench/arms.ts).
// Subcommands are registered through registerBenchSubcommands, so another benchmark (e.g. OPTune vs. baselines
// as the default action of `bench`) can be added here without touching the engine one.

import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";

import { Command, InvalidArgumentError } from "commander";

import { PRESETS, runBench } from "../bench/arms.js";
import { GEMMA3_270M_SHAPE, GPT2_124M_SHAPE, TINY_SHAPE, benchEngine, formatEngineReport } from "../bench/engine.js";
import { flagValue, readConfigFile } from "./config_file.js";
import { terminalReporter } from "./progress.js";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
  return n;
}

const SHAPE_SETS = {
  tiny: [TINY_SHAPE],
  all: [TINY_SHAPE, GPT2_124M_SHAPE],
  gemma3: [GEMMA3_270M_SHAPE],
} as const;
type ShapeSet = keyof typeof SHAPE_SETS;

function shapesOption(value: string): ShapeSet {
  if (!Object.hasOwn(SHAPE_SETS, value)) throw new InvalidArgumentError('expected "tiny", "all" or "gemma3"');
  return value as ShapeSet;
}

interface EngineCliOptions {
  shapes: ShapeSet;
  threads?: number;
  torch: boolean;
  json?: boolean;
}

export function engineBenchCommand(): Command {
  return new Command("engine")
    .description(
      "tokens/s of sampling (16 prompts x 32 tokens, 64 new), sequence log-probs (16 x 128) and one DPO step " +
        "(8 pairs, 16 x 128), on tiny GPT-2 and GPT-2 124M, beside PyTorch when python3 (or $OPTUNE_PYTHON) has it",
    )
    .option("--shapes <which>", '"tiny" skips GPT-2 124M; "gemma3": gemma-3-270m\'s shape alone', shapesOption, "all")
    .option("--threads <n>", "engine and torch threads (default: the engine's)", positiveInt)
    .option("--no-torch", "skip the PyTorch side")
    .option("--json", "print one JSON object instead of a table")
    .action(async (options: EngineCliOptions) => {
      const json = options.json === true;
      const report = await benchEngine({
        shapes: [...SHAPE_SETS[options.shapes]],
        ...(options.threads !== undefined ? { threads: options.threads } : {}),
        torch: options.torch,
        // Progress to stderr so stdout stays one JSON object (or the table).
        log: (line) => console.error(`  ${line}`),
      });
      console.log(json ? JSON.stringify(report) : formatEngineReport(report));
    });
}

/** Adds the bench subcommands to `bench`; a new benchmark adds its own subcommand or default action here. */
export function registerBenchSubcommands(bench: Command): Command {
  return bench.addCommand(engineBenchCommand());
}

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
}

function goldOption(value: string): "sampled" | "greedy" {
  if (value !== "sampled" && value !== "greedy") throw new InvalidArgumentError('expected "sampled" or "greedy"');
  return value;
}

interface BaselinesCliOptions {
  quick?: boolean;
  config?: string;
  out?: string;
  seeds?: number;
  ablationSeeds?: number;
  gold: "sampled" | "greedy";
  [flag: string]: string | number | boolean | undefined;
}

/** Bench-level settings that may be varied from the command line: flag -> dotted config path. */
const SETTING_FLAGS: ReadonlyArray<readonly [flag: string, usage: string, path: string]> = [
  ["iterations", "--iterations <n>", "loop.iterations"],
  ["prompts", "--prompts <n>", "loop.prompts"],
  ["rho", "--rho <x>", "loop.rho"],
  ["k", "--k <n>", "loop.k"],
  ["statistic", "--statistic <name>", "loop.statistic"],
];

/** The default action of `bench`: OPTune vs. uniform vs. all, each with dpo and wdpo, over seeds. */
function addBaselinesAction(bench: Command): Command {
  bench
    .description(
      "benchmarks; without a subcommand: OPTune vs. uniform sampling vs. full regeneration (all), each with dpo " +
        "and wdpo over seeds, plus ablations of the selection statistic and the wDPO weight function",
    )
    .option("--quick", "the small preset (CI smoke test, about 75 s on 2 cores from a cold cache)")
    .option("-c, --config <file>", "run config to benchmark (.yaml, .yml or .json; default: the built-in task's defaults)")
    .option("-o, --out <dir>", "bench directory (default runs/bench-<timestamp>)")
    .option("--seeds <n>", "seeds of the main arms (default: the preset's)", positiveInt)
    .option("--ablation-seeds <n>", "seeds of the ablation arms; 0 skips them (default: the preset's)", nonNegativeInt)
    .option("--gold <kind>", '"sampled" (mean over eval.samples responses) or "greedy"', goldOption, "sampled");
  for (const [, usage, path] of SETTING_FLAGS) bench.option(usage, `override ${path} for every arm`);
  return bench.action(async (options: BaselinesCliOptions) => {
    const preset = options.quick === true ? PRESETS.quick : PRESETS.default;
    const out = options.out ?? `runs/bench-${new Date().toISOString().replace(/[:.]/g, "-")}`;
    const overrides: [string, unknown][] = [];
    for (const [flag, , path] of SETTING_FLAGS) {
      const value = options[flag];
      if (typeof value === "string") overrides.push([path, flagValue(value)]);
    }
    const result = await runBench({
      base: options.config === undefined ? {} : readConfigFile(options.config),
      // A user task's relative paths are relative to its config file, as in `optune run`.
      baseDir: options.config === undefined ? process.cwd() : dirname(resolve(options.config)),
      preset,
      overrides,
      ...(options.seeds !== undefined ? { seeds: options.seeds } : {}),
      ...(options.ablationSeeds !== undefined ? { ablationSeeds: options.ablationSeeds } : {}),
      gold: options.gold,
      out,
      reporter: terminalReporter(),
    });
    console.log(readFileSync(result.outputs.markdown, "utf8"));
    console.log(`results: ${result.outputs.json}\ntable:   ${result.outputs.markdown}\nplot:    ${result.outputs.plot}`);
  });
}

export function benchCommand(): Command {
  return registerBenchSubcommands(addBaselinesAction(new Command("bench")));
}
