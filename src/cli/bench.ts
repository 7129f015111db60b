// `optune bench`: benchmarks. `bench engine` measures the engine's ops against PyTorch (src/bench/engine.ts).
// Subcommands are registered through registerBenchSubcommands, so another benchmark (e.g. OPTune vs. baselines
// as the default action of `bench`) can be added here without touching the engine one.

import { Command, InvalidArgumentError } from "commander";

import { GPT2_124M_SHAPE, TINY_SHAPE, benchEngine, formatEngineReport } from "../bench/engine.js";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
  return n;
}

function shapesOption(value: string): "tiny" | "all" {
  if (value !== "tiny" && value !== "all") throw new InvalidArgumentError('expected "tiny" or "all"');
  return value;
}

interface EngineCliOptions {
  shapes: "tiny" | "all";
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
    .option("--shapes <which>", '"tiny" skips GPT-2 124M', shapesOption, "all")
    .option("--threads <n>", "engine and torch threads (default: the engine's)", positiveInt)
    .option("--no-torch", "skip the PyTorch side")
    .option("--json", "print one JSON object instead of a table")
    .action(async (options: EngineCliOptions) => {
      const json = options.json === true;
      const report = await benchEngine({
        shapes: options.shapes === "tiny" ? [TINY_SHAPE] : [TINY_SHAPE, GPT2_124M_SHAPE],
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

export function benchCommand(): Command {
  return registerBenchSubcommands(new Command("bench").description("benchmarks"));
}
