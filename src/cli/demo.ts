// `optune demo prepare`: trains (or finds in the cache) the built-in task's SFT policy and reward model, which
// `optune run` otherwise prepares on first use.

import { Command } from "commander";

import { loadConfig } from "../config/schema.js";
import { ensurePrepared } from "../tasks/builtin/prepare.js";
import { readConfigFile } from "./config_file.js";
import { terminalReporter } from "./progress.js";

function prepareCommand(): Command {
  return new Command("prepare")
    .description("train the built-in task's SFT policy and reward model into the cache (reused when present)")
    .option("-c, --config <file>", "run config whose prepare section (and run.cacheDir) to use")
    .action(async (flags: { config?: string }) => {
      const config = loadConfig(flags.config === undefined ? {} : readConfigFile(flags.config));
      if (config.task !== "builtin") {
        throw new Error(`${flags.config}: task '${config.task}' has nothing to prepare; demo prepare makes the built-in task's models`);
      }
      const started = performance.now();
      const prepared = await ensurePrepared(config.prepare, config.run.cacheDir, terminalReporter());
      const { report, paths } = prepared;
      console.log(prepared.reused ? `cached: ${paths.dir}` : `prepared in ${((performance.now() - started) / 1000).toFixed(1)}s: ${paths.dir}`);
      console.log(`policy:       ${paths.policy} (SFT loss ${report.sftFinalLoss.toFixed(3)})`);
      console.log(`reward model: ${paths.reward} (held-out accuracy vs gold ${report.rewardHeldOutAccuracy.toFixed(3)})`);
    });
}

export function demoCommand(): Command {
  return new Command("demo").description("the built-in demo task").addCommand(prepareCommand());
}
