// `optune bench engine`: tokens/s of the engine's three hot ops (sampling, sequence log-probs, one DPO step)
// through the engine wrapper, and of the PyTorch/transformers equivalent (bench/torch_engine.py) when a Python
// with torch is around. Both sides get the same shapes, sizes, repetitions and thread count from one spec, and
// run one after the other so they never compete for cores.

import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { resolve } from "node:path";

import { EngineModel, type ModelConfigInput, engineInfo, packBatch, packageRoot, setThreads } from "../engine/index.js";

/**
 * *_bf16: the same work on a model with precision "bf16" (bf16 matmuls, fp32 accumulation); PyTorch runs it under
 * torch.autocast("cpu", bfloat16), so each ratio compares like with like (the fp32 rows give PyTorch's fp32 speed).
 * sample_top_p: fp32 sampling restricted to the top-p nucleus (generate's top_p on the PyTorch side).
 */
export type EngineOp =
  | "sample"
  | "sample_bf16"
  | "sample_top_p"
  | "logprobs"
  | "dpo_step"
  | "dpo_step_bf16"
  | "dpo_step_lora";

/**
 * The dpo_step_lora op's adapters: rank 16 (alpha 32) on every linear layer of the blocks (GPT-2's c_attn, c_proj,
 * c_fc; Gemma's q/k/v/o and MLP projections); PyTorch runs the same with PEFT (get_peft_model) when it is installed.
 */
export const BENCH_LORA = { rank: 16, alpha: 32 } as const;

/** The linear layers of a shape's blocks, by the module names transformers (and PEFT) give them. */
export function loraTargets(shape: BenchShape): string[] {
  return shape.arch === "gemma3_text"
    ? ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    : ["c_attn", "c_proj", "c_fc"];
}

/** Nucleus mass of the `sample_top_p` op (fp32, no top-k, on both sides). */
export const BENCH_TOP_P = 0.9;

/** A model shape and what to run on it: GPT-2 (d_ff = 4 d) unless `arch` says Gemma 3. */
export interface BenchShape {
  name: string;
  arch?: "gpt2" | "gemma3_text";
  d: number;
  layers: number;
  heads: number;
  vocab: number;
  positions: number;
  /** gemma3_text: KV heads, head size, MLP width, sliding window (every 6th layer full, as transformers' default). */
  kvHeads?: number;
  headDim?: number;
  ff?: number;
  window?: number;
  ops: EngineOp[];
  warmup: number;
  reps: number;
}

/** Work per op. Log-probs and the DPO step count every token of the batch; sampling counts new tokens only. */
export interface BenchSizes {
  samplePrompts: number;
  samplePromptLen: number;
  sampleNewTokens: number;
  /** Sequences of the log-prob and DPO batches (an even number: pairs are sequences 2j / 2j+1). */
  seqs: number;
  seqLen: number;
  /** Prompt tokens of each log-prob / DPO sequence; the rest is the scored response. */
  seqPromptLen: number;
}

/** What bench/torch_engine.py receives as its one argument. */
export interface EngineBenchSpec {
  threads: number;
  beta: number;
  /** The sample_top_p op's nucleus mass. */
  topP: number;
  /** The dpo_step_lora op's adapters (their targets: loraTargets of each shape, in the shape as `loraTargets`). */
  lora: { rank: number; alpha: number };
  sizes: BenchSizes;
  shapes: (BenchShape & { loraTargets: string[] })[];
}

export const TINY_SHAPE: BenchShape = {
  name: "tiny-gpt2-d256-L4",
  d: 256,
  layers: 4,
  heads: 4,
  vocab: 4096,
  positions: 512,
  ops: ["sample", "sample_bf16", "sample_top_p", "logprobs", "dpo_step", "dpo_step_bf16", "dpo_step_lora"],
  warmup: 1,
  reps: 3,
};

// One timed repetition after one warm-up: a 124M DPO step takes many seconds on a small CPU.
export const GPT2_124M_SHAPE: BenchShape = {
  name: "gpt2-124m",
  d: 768,
  layers: 12,
  heads: 12,
  vocab: 50257,
  positions: 1024,
  ops: ["logprobs", "dpo_step", "dpo_step_bf16", "dpo_step_lora"],
  warmup: 1,
  reps: 1,
};

// gemma-3-270m's shape (268M parameters, 168M of them the tied 262144-row embedding), query_pre_attn_scalar = its
// head size; one timed repetition after one warm-up.
export const GEMMA3_270M_SHAPE: BenchShape = {
  name: "gemma3-270m",
  arch: "gemma3_text",
  d: 640,
  layers: 18,
  heads: 4,
  kvHeads: 1,
  headDim: 256,
  ff: 2048,
  vocab: 262144,
  positions: 32768,
  window: 512,
  ops: ["sample", "sample_bf16", "logprobs", "dpo_step", "dpo_step_bf16", "dpo_step_lora"],
  warmup: 1,
  reps: 1,
};

export const DEFAULT_SIZES: BenchSizes = {
  samplePrompts: 16,
  samplePromptLen: 32,
  sampleNewTokens: 64,
  seqs: 16,
  seqLen: 128,
  seqPromptLen: 16,
};

const BETA = 0.1;

export interface OpResult {
  op: EngineOp;
  shape: string;
  tok_per_s: number;
  torch_tok_per_s: number | null;
  /** tok_per_s / torch_tok_per_s. */
  ratio: number | null;
}

export interface MachineInfo {
  cpu: string;
  cores: number;
  threads: number;
  blas: string;
}

export interface TorchInfo {
  python: string;
  /** torch and transformers versions when they ran. */
  torch: string | null;
  transformers: string | null;
  /** Why there are no torch figures, when there are none. */
  unavailable: string | null;
}

export interface EngineBenchReport {
  machine: MachineInfo;
  torch: TorchInfo;
  ops: OpResult[];
}

export interface EngineBenchOptions {
  shapes?: BenchShape[];
  sizes?: BenchSizes;
  /** Engine and torch threads; default: the engine's current count. */
  threads?: number;
  /** false: skip the PyTorch side. */
  torch?: boolean;
  /** Python to run; default $OPTUNE_PYTHON, else python3 on PATH. */
  python?: string;
  /** Progress lines (which op is running). */
  log?: (line: string) => void;
}

/** The CPU model as /proc/cpuinfo names it (os.cpus() elsewhere). */
function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m?.[1] !== undefined) return m[1].trim();
  } catch {
    // not Linux: fall through
  }
  return cpus()[0]?.model ?? "unknown";
}

function checkSizes(s: BenchSizes): void {
  for (const [k, v] of Object.entries(s)) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`bench sizes: ${k} must be a positive integer, got ${v}`);
  }
  if (s.seqs % 2 !== 0) throw new RangeError(`bench sizes: seqs must be even (pairs), got ${s.seqs}`);
  if (s.seqPromptLen >= s.seqLen) throw new RangeError("bench sizes: seqPromptLen must be below seqLen");
}

/** Deterministic token ids in [0, vocab) (a 32-bit LCG is plenty: only the work matters, not the values). */
function tokenStream(seed: number, vocab: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x % vocab;
  };
}

async function timeIt(fn: () => Promise<unknown>, warmup: number, reps: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await fn();
  return (performance.now() - t0) / 1000 / reps;
}

interface Measured {
  op: EngineOp;
  shape: string;
  tok_per_s: number;
}

function benchConfig(shape: BenchShape): ModelConfigInput {
  const common = { vocabSize: shape.vocab, dModel: shape.d, nLayer: shape.layers, nHead: shape.heads };
  if (shape.arch !== "gemma3_text") return { arch: "gpt2", ...common, dFf: 4 * shape.d, maxPositions: shape.positions };
  const { kvHeads, headDim, ff, window } = shape;
  if (kvHeads === undefined || headDim === undefined || ff === undefined || window === undefined) {
    throw new RangeError(`bench shape ${shape.name}: a gemma3_text shape needs kvHeads, headDim, ff and window`);
  }
  return {
    arch: "gemma3_text",
    ...common,
    nKvHead: kvHeads,
    headDim,
    dFf: ff,
    maxPositions: shape.positions,
    queryPreAttnScalar: headDim,
    slidingWindow: window,
  };
}

async function runEngineShape(shape: BenchShape, sizes: BenchSizes, log: (line: string) => void): Promise<Measured[]> {
  const config = benchConfig(shape);
  const model = await EngineModel.create(config, 1);
  const bf16 = await EngineModel.create(config, 1, { device: "cpu", precision: "bf16" });
  const out: Measured[] = [];
  const next = tokenStream(7, shape.vocab);
  try {
    const prompts = Array.from({ length: sizes.samplePrompts }, () => Array.from({ length: sizes.samplePromptLen }, next));
    for (const op of ["sample", "sample_bf16", "sample_top_p"] as const) {
      if (!shape.ops.includes(op)) continue;
      log(`engine ${shape.name}: ${op}`);
      const m = op === "sample_bf16" ? bf16 : model;
      // Sampling at temperature 1, over the full vocabulary or (sample_top_p) its nucleus, and no stop tokens:
      // every response gets all its new tokens.
      const topP = op === "sample_top_p" ? BENCH_TOP_P : 1;
      const sec = await timeIt(
        () => m.sample({ prompts, maxNewTokens: sizes.sampleNewTokens, temperature: 1, topK: 0, topP, seed: 3 }),
        shape.warmup,
        shape.reps,
      );
      out.push({ op, shape: shape.name, tok_per_s: (sizes.samplePrompts * sizes.sampleNewTokens) / sec });
    }
    const batch = packBatch(
      Array.from({ length: sizes.seqs }, () => ({
        prompt: Array.from({ length: sizes.seqPromptLen }, next),
        response: Array.from({ length: sizes.seqLen - sizes.seqPromptLen }, next),
      })),
    );
    const tokens = sizes.seqs * sizes.seqLen;
    if (shape.ops.includes("logprobs")) {
      log(`engine ${shape.name}: logprobs`);
      const sec = await timeIt(() => model.logprobs(batch), shape.warmup, shape.reps);
      out.push({ op: "logprobs", shape: shape.name, tok_per_s: tokens / sec });
    }
    for (const op of ["dpo_step", "dpo_step_bf16", "dpo_step_lora"] as const) {
      if (!shape.ops.includes(op)) continue;
      log(`engine ${shape.name}: ${op}`);
      // dpo_step_lora: a fresh copy of the model with adapters (the same weights: the same seed)
      const lora = op === "dpo_step_lora" ? await EngineModel.create(config, 1) : null;
      try {
        if (lora !== null) await lora.enableLora({ ...BENCH_LORA, targets: loraTargets(shape), seed: 1 });
        const m = lora ?? (op === "dpo_step_bf16" ? bf16 : model);
        // Reference log-probs cached once, outside the timing, as the online loop does.
        const ref = (await m.logprobs(batch)).seqLogps;
        const pairs = sizes.seqs / 2;
        const chosen = Int32Array.from({ length: pairs }, (_, j) => 2 * j);
        const rejected = Int32Array.from({ length: pairs }, (_, j) => 2 * j + 1);
        const refChosen = Float32Array.from(chosen, (i) => ref[i] as number);
        const refRejected = Float32Array.from(rejected, (i) => ref[i] as number);
        const sec = await timeIt(
          () => m.trainStep({ loss: "dpo", batch, chosen, rejected, refChosen, refRejected, beta: BETA }),
          shape.warmup,
          shape.reps,
        );
        out.push({ op, shape: shape.name, tok_per_s: tokens / sec });
      } finally {
        await lora?.dispose();
      }
    }
  } finally {
    await model.dispose();
    await bf16.dispose();
  }
  return out;
}

interface TorchRun {
  info: TorchInfo;
  results: Measured[];
}

/** Runs bench/torch_engine.py; any failure to start it or to import torch yields no figures and a reason. */
async function runTorch(spec: EngineBenchSpec, python: string, log: (line: string) => void): Promise<TorchRun> {
  const info: TorchInfo = { python, torch: null, transformers: null, unavailable: null };
  const script = resolve(packageRoot, "bench", "torch_engine.py");
  if (!existsSync(script)) return { info: { ...info, unavailable: `${script} not found` }, results: [] };
  log(`torch: ${python} ${script}`);
  const { code, stdout, stderr, error } = await new Promise<{
    code: number | null;
    stdout: string;
    stderr: string;
    error: Error | null;
  }>((done) => {
    const child = spawn(python, [script, JSON.stringify(spec)], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let lineStart = 0;
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      // Relay each finished op as progress while the rest runs.
      let nl: number;
      while ((nl = stdout.indexOf("\n", lineStart)) >= 0) {
        const line = stdout.slice(lineStart, nl);
        lineStart = nl + 1;
        if (line.includes('"op"')) log(`torch: ${line}`);
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    child.on("error", (err) => done({ code: null, stdout, stderr, error: err }));
    child.on("close", (c) => done({ code: c, stdout, stderr, error: null }));
  });
  if (error !== null) return { info: { ...info, unavailable: `cannot run ${python}: ${error.message}` }, results: [] };

  const results: Measured[] = [];
  for (const line of stdout.split("\n")) {
    if (line.trim() === "") continue;
    const obj = JSON.parse(line) as Record<string, unknown>;
    if (typeof obj["unavailable"] === "string") info.unavailable = obj["unavailable"];
    if (typeof obj["torch"] === "string") info.torch = obj["torch"];
    if (typeof obj["transformers"] === "string") info.transformers = obj["transformers"];
    if (typeof obj["op"] === "string" && typeof obj["shape"] === "string" && typeof obj["tok_per_s"] === "number") {
      results.push({ op: obj["op"] as EngineOp, shape: obj["shape"], tok_per_s: obj["tok_per_s"] });
    }
  }
  if (code !== 0 && info.unavailable === null) {
    // Keep whatever finished, and say why the rest is missing.
    const tail = stderr.trim().split("\n").slice(-3).join(" | ");
    info.unavailable = `${python} exited with ${code}: ${tail}`;
  }
  return { info, results };
}

/** Measures every op of every shape on the engine, then (optionally) on PyTorch, and merges the two. */
export async function benchEngine(options: EngineBenchOptions = {}): Promise<EngineBenchReport> {
  const shapes = options.shapes ?? [TINY_SHAPE, GPT2_124M_SHAPE];
  const sizes = options.sizes ?? DEFAULT_SIZES;
  checkSizes(sizes);
  const log = options.log ?? (() => {});
  if (options.threads !== undefined) setThreads(options.threads);
  const info = engineInfo();
  const spec: EngineBenchSpec = {
    threads: info.threads,
    beta: BETA,
    topP: BENCH_TOP_P,
    lora: { ...BENCH_LORA },
    sizes,
    shapes: shapes.map((shape) => ({ ...shape, loraTargets: loraTargets(shape) })),
  };

  const engine: Measured[] = [];
  for (const shape of shapes) engine.push(...(await runEngineShape(shape, sizes, log)));

  const python = options.python ?? (process.env["OPTUNE_PYTHON"] || "python3");
  const torch: TorchRun =
    options.torch === false
      ? { info: { python, torch: null, transformers: null, unavailable: "skipped (--no-torch)" }, results: [] }
      : await runTorch(spec, python, log);

  const ops = engine.map((m): OpResult => {
    const t = torch.results.find((r) => r.op === m.op && r.shape === m.shape);
    const torchTps = t?.tok_per_s ?? null;
    return {
      op: m.op,
      shape: m.shape,
      tok_per_s: m.tok_per_s,
      torch_tok_per_s: torchTps,
      ratio: torchTps === null ? null : m.tok_per_s / torchTps,
    };
  });
  return {
    machine: { cpu: cpuModel(), cores: cpus().length, threads: info.threads, blas: info.blas },
    torch: torch.info,
    ops,
  };
}

/** The report as a text table. */
export function formatEngineReport(r: EngineBenchReport): string {
  const lines = [
    `machine: ${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.threads} threads, BLAS ${r.machine.blas}`,
    r.torch.torch !== null
      ? `torch:   ${r.torch.torch}, transformers ${r.torch.transformers ?? "?"} (${r.torch.python})`
      : `torch:   none (${r.torch.unavailable ?? "unknown"})`,
  ];
  if (r.torch.torch !== null && r.torch.unavailable !== null) lines.push(`         ${r.torch.unavailable}`);
  const rows = [["op", "shape", "optune tok/s", "torch tok/s", "ratio"]];
  for (const o of r.ops) {
    rows.push([
      o.op,
      o.shape,
      o.tok_per_s.toFixed(0),
      o.torch_tok_per_s === null ? "-" : o.torch_tok_per_s.toFixed(0),
      o.ratio === null ? "-" : `${o.ratio.toFixed(2)}x`,
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  lines.push("");
  for (const row of rows) {
    // Text columns left-aligned, numbers right-aligned.
    lines.push(row.map((cell, c) => (c < 2 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  "));
  }
  return lines.join("\n");
}
