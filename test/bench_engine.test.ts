// `optune bench engine` on a micro shape with a few tokens: the report's JSON shape, the table, and that torch
// figures are null (with a reason) when the Python it is pointed at does not exist. Needs no Python.

import { afterEach, describe, expect, it } from "vitest";

import {
  type BenchShape,
  type BenchSizes,
  type EngineBenchReport,
  benchEngine,
  formatEngineReport,
  loraTargets,
} from "../src/bench/engine.js";

const micro: BenchShape = {
  name: "micro",
  d: 16,
  layers: 2,
  heads: 2,
  vocab: 50,
  positions: 64,
  ops: ["sample", "sample_top_p", "logprobs", "dpo_step", "dpo_step_lora"],
  warmup: 1,
  reps: 1,
};

const sizes: BenchSizes = { samplePrompts: 2, samplePromptLen: 3, sampleNewTokens: 4, seqs: 4, seqLen: 8, seqPromptLen: 2 };

const savedPython = process.env["OPTUNE_PYTHON"];
afterEach(() => {
  if (savedPython === undefined) delete process.env["OPTUNE_PYTHON"];
  else process.env["OPTUNE_PYTHON"] = savedPython;
});

describe("bench engine", () => {
  it("reports every op with null torch fields when $OPTUNE_PYTHON does not exist", async () => {
    process.env["OPTUNE_PYTHON"] = "/nonexistent";
    const report: EngineBenchReport = await benchEngine({ shapes: [micro], sizes });
    // Round-trips through JSON as `--json` prints it.
    const parsed = JSON.parse(JSON.stringify(report)) as EngineBenchReport;

    expect(Object.keys(parsed).sort()).toEqual(["machine", "ops", "torch"]);
    expect(typeof parsed.machine.cpu).toBe("string");
    expect(parsed.machine.cores).toBeGreaterThan(0);
    expect(parsed.machine.threads).toBeGreaterThan(0);
    expect(typeof parsed.machine.blas).toBe("string");
    expect(parsed.torch.python).toBe("/nonexistent");
    expect(parsed.torch.torch).toBeNull();
    expect(parsed.torch.unavailable).toMatch(/nonexistent/);

    expect(parsed.ops.map((o) => o.op)).toEqual(["sample", "sample_top_p", "logprobs", "dpo_step", "dpo_step_lora"]);
    for (const o of parsed.ops) {
      expect(Object.keys(o).sort()).toEqual(["op", "ratio", "shape", "tok_per_s", "torch_tok_per_s"]);
      expect(o.shape).toBe("micro");
      expect(Number.isFinite(o.tok_per_s) && o.tok_per_s > 0).toBe(true);
      expect(o.torch_tok_per_s).toBeNull();
      expect(o.ratio).toBeNull();
    }

    const table = formatEngineReport(report);
    expect(table).toMatch(/torch:\s+none/);
    expect(table).toMatch(/^dpo_step\s+micro\s+\d+\s+-\s+-$/m);
  });

  it("skips the torch side without trying Python when asked", async () => {
    const report = await benchEngine({ shapes: [{ ...micro, ops: ["logprobs"] }], sizes, torch: false });
    expect(report.torch.unavailable).toMatch(/skipped/);
    expect(report.ops).toHaveLength(1);
  });

  it("runs a Gemma 3 shape (its own config and LoRA targets) and refuses one without its fields", async () => {
    const gemma: BenchShape = { ...micro, name: "micro-gemma", arch: "gemma3_text", kvHeads: 1, headDim: 8, ff: 24, window: 4 };
    const report = await benchEngine({ shapes: [gemma], sizes, torch: false });
    expect(report.ops.map((o) => o.op)).toEqual(micro.ops);
    expect(report.ops.every((o) => o.shape === "micro-gemma" && o.tok_per_s > 0)).toBe(true);
    expect(loraTargets(gemma)).toContain("gate_proj");
    await expect(benchEngine({ shapes: [{ ...gemma, window: undefined }], sizes, torch: false })).rejects.toThrow(
      /micro-gemma: a gemma3_text shape needs kvHeads, headDim, ff and window/,
    );
  });

  it("rejects sizes it cannot pair", async () => {
    await expect(benchEngine({ shapes: [micro], sizes: { ...sizes, seqs: 3 } })).rejects.toThrow(/even/);
  });
});
