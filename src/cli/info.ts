// `optune info`: what the native engine was built with, to check an install or attach to a bug report.

import { Command } from "commander";

import { engineInfo } from "../engine/index.js";
import type { GpuDevice } from "../engine/types.js";

/** One line per GPU: index, name, compute capability, memory (free where known), and why it is unusable if so. */
export function describeGpu(d: GpuDevice): string {
  const gib = (bytes: number): string => (bytes / 2 ** 30).toFixed(1);
  const free = d.freeMemory === null ? "" : ` (${gib(d.freeMemory)} GiB free)`;
  const state = d.unusable === null ? "" : `; unusable: ${d.unusable}`;
  const memory = `${gib(d.totalMemory)} GiB${free}`;
  return `cuda:${d.index} ${d.name}, compute capability ${d.computeCapability}, ${memory}${state}`;
}

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
      const archs = info.cudaArchs === null ? "" : ` (cuda archs ${info.cudaArchs})`;
      console.log(`backends: ${info.backends.join(", ")}${archs}`);
      console.log(`blas:     ${info.blas}`);
      const bf16 = info.bf16Native ? "AVX512-BF16 (precision bf16 runs natively)" : "emulated (precision bf16 is slower than fp32 here)";
      console.log(`cpu bf16: ${bf16}`);
      console.log(`threads:  ${info.threads}`);
      if (info.devices.length === 0) {
        const why = info.backends.includes("cuda") ? "no GPU visible" : "built without CUDA";
        console.log(`devices:  none (${why})`);
      }
      for (const d of info.devices) console.log(`devices:  ${describeGpu(d)}`);
    });
}
