// `optune info`: what the native engine was built with, to check an install or attach to a bug report.

import { Command } from "commander";

import { engineInfo } from "../engine/index.js";

export function infoCommand(): Command {
  return new Command("info")
    .description("print the engine version, backends, BLAS, thread count and devices")
    .option("--json", "print one JSON object instead of text")
    .action((options: { json?: boolean }) => {
      const info = engineInfo();
      if (options.json === true) {
        console.log(JSON.stringify(info));
        return;
      }
      console.log(`optune ${info.version}`);
      console.log(`backends: ${info.backends.join(", ")}`);
      console.log(`blas:     ${info.blas}`);
      console.log(`threads:  ${info.threads}`);
      console.log(`devices:  ${info.devices.length > 0 ? info.devices.join(", ") : "none (CPU only)"}`);
    });
}
