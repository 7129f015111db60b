// The native engine through src/engine: model creation, log-probs, checkpoints, training, sampling, error
// reporting, call queueing, and that long calls leave the JS event loop free.

import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import {
  type Batch,
  EngineModel,
  engineInfo,
  packBatch,
  packageRoot,
  readModelConfig,
  setThreads,
} from "../src/engine/index.js";

import { TINY_MODEL } from "./tiny_model.js";

const tiny = TINY_MODEL;

// Two preference pairs sharing prompts: sequences 0/1 are pair 0 (chosen/rejected), 2/3 pair 1.
function pairBatch(): Batch {
  return packBatch([
    { prompt: [1, 2, 3], response: [4, 5, 6, 7] },
    { prompt: [1, 2, 3], response: [8, 9] },
    { prompt: [10, 11], response: [12, 13, 14] },
    { prompt: [10, 11], response: [15, 16, 17, 18, 19] },
  ]);
}

// Numbers, typed arrays, arrays and objects equal up to float rounding (|a - b| <= 1e-6 (1 + |b|)).
function expectClose(actual: unknown, expected: unknown, path = "value"): void {
  if (typeof expected === "number") {
    expect(typeof actual, path).toBe("number");
    const a = actual as number;
    expect(Math.abs(a - expected) <= 1e-6 * (1 + Math.abs(expected)), `${path}: ${a} vs ${expected}`).toBe(true);
  } else if (ArrayBuffer.isView(expected) || Array.isArray(expected)) {
    const e = expected as ArrayLike<unknown>;
    const a = actual as ArrayLike<unknown>;
    expect(a.length, `${path}.length`).toBe(e.length);
    for (let i = 0; i < e.length; i++) expectClose(a[i], e[i], `${path}[${i}]`);
  } else if (typeof expected === "object" && expected !== null) {
    expect(Object.keys(actual as object).sort(), `${path} keys`).toEqual(Object.keys(expected).sort());
    for (const [k, v] of Object.entries(expected)) expectClose((actual as Record<string, unknown>)[k], v, `${path}.${k}`);
  } else {
    expect(actual, path).toEqual(expected);
  }
}

const tmpDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "optune-engine-test-"));
  tmpDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe("engine info", () => {
  it("reports version, backends, BLAS, threads and devices", () => {
    const info = engineInfo();
    const pkg = JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as { version: string };
    expect(info.version).toBe(pkg.version);
    expect(info.backends).toContain("cpu");
    expect(info.cudaArchs === null).toBe(!info.backends.includes("cuda"));
    expect(["openblas", "builtin"]).toContain(info.blas);
    expect(Number.isInteger(info.threads) && info.threads >= 1).toBe(true);
    expect(info.devices).toEqual([]);
    // native bf16 needs a CPU with AVX512-BF16 (the build may still leave it out, e.g. without -march=native)
    expect(typeof info.bf16Native).toBe("boolean");
    if (info.bf16Native && existsSync("/proc/cpuinfo")) expect(readFileSync("/proc/cpuinfo", "utf8")).toMatch(/\bavx512_bf16\b/);
  });

  it("setThreads changes the reported thread count and rejects nonsense", () => {
    const before = engineInfo().threads;
    try {
      setThreads(1);
      expect(engineInfo().threads).toBe(1);
    } finally {
      setThreads(before);
    }
    expect(engineInfo().threads).toBe(before);
    expect(() => setThreads(0)).toThrow(/integer in \[1, 4096\]/);
    expect(() => setThreads(1.5)).toThrow(RangeError);
  });
});

describe("models", () => {
  it("creates a GPT-2 model and computes log-probs of the right shapes", async () => {
    const m = await EngineModel.create(tiny, 1);
    expect(m.config.arch).toBe("gpt2");
    expect(m.config.nKvHead).toBe(2);
    expect(m.config.headDim).toBe(8);
    expect(m.numParams).toBeGreaterThan(0);

    const batch = packBatch([
      { prompt: [1, 2], response: [3, 4, 5] },
      { prompt: [6], response: [] },
      { prompt: [7, 8, 9], response: [10] },
    ]);
    const r = await m.logprobs(batch);
    expect(r.tokenLogps).toBeInstanceOf(Float32Array);
    expect(r.tokenLogps.length).toBe(4);
    expect(r.seqLogps.length).toBe(3);
    for (const lp of r.tokenLogps) expect(lp < 0 && Number.isFinite(lp)).toBe(true);
    expect(r.seqLogps[0]).toBeCloseTo((r.tokenLogps[0] ?? 0) + (r.tokenLogps[1] ?? 0) + (r.tokenLogps[2] ?? 0), 4);
    expect(r.seqLogps[1]).toBe(0);
    expect(r.seqLogps[2]).toBeCloseTo(r.tokenLogps[3] ?? 0, 5);

    // Same seed, same weights; another seed, other weights.
    const same = await EngineModel.create(tiny, 1);
    const other = await EngineModel.create(tiny, 2);
    expect(await same.getParams()).toEqual(await m.getParams());
    expect(await other.getParams()).not.toEqual(await m.getParams());
    await Promise.all([m.dispose(), same.dispose(), other.dispose()]);
  });

  it("saves and loads a checkpoint that is equal to the original", async () => {
    const m = await EngineModel.create({ ...tiny, eosTokenId: 0 }, 3);
    const dir = join(tempDir(), "ckpt");
    await m.save(dir);
    const loaded = await EngineModel.load(dir);
    expect(loaded.config).toEqual(m.config);
    expect(loaded.numParams).toBe(m.numParams);
    expect(await loaded.getParams()).toEqual(await m.getParams());
    const batch = pairBatch();
    expect((await loaded.logprobs(batch)).seqLogps).toEqual((await m.logprobs(batch)).seqLogps);
  });

  it("creates Llama 3 (llama3 RoPE), Gemma 3, SmolLM3 and OLMo 2 models whose configs survive a save and a load", async () => {
    const llama3 = {
      arch: "llama" as const, vocabSize: 50, dModel: 16, nLayer: 2, nHead: 2, nKvHead: 1, dFf: 32, maxPositions: 64,
      ropeTheta: 500000,
      ropeScaling: { type: "llama3" as const, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8 },
    };
    const gemma = {
      arch: "gemma3_text" as const, vocabSize: 50, dModel: 16, nLayer: 3, nHead: 2, nKvHead: 1, headDim: 8, dFf: 32,
      maxPositions: 64, queryPreAttnScalar: 8, slidingWindow: 4, ropeScaling: { type: "linear" as const, factor: 2 },
      layerTypes: ["sliding_attention", "full_attention", "sliding_attention"] as ("sliding_attention" | "full_attention")[],
    };
    const smollm3 = {
      arch: "smollm3" as const, vocabSize: 50, dModel: 16, nLayer: 3, nHead: 2, nKvHead: 1, dFf: 32, maxPositions: 64,
      noRopeLayers: [1, 0, 1], slidingWindow: 4,
      layerTypes: ["full_attention", "sliding_attention", "full_attention"] as ("sliding_attention" | "full_attention")[],
      ropeScaling: { type: "linear" as const, factor: 2 },
    };
    const olmo2 = {
      arch: "olmo2" as const, vocabSize: 50, dModel: 16, nLayer: 2, nHead: 2, nKvHead: 1, dFf: 32, maxPositions: 64,
      ropeScaling: { type: "linear" as const, factor: 3 },
    };
    for (const config of [llama3, gemma, smollm3, olmo2]) {
      const m = await EngineModel.create(config, 4);
      expect(m.config).toMatchObject(config);
      const dir = join(tempDir(), `ckpt-${config.arch}`);
      await m.save(dir);
      const loaded = await EngineModel.load(dir);
      expect(loaded.config).toEqual(m.config);
      const batch = pairBatch();
      expect((await loaded.logprobs(batch)).seqLogps).toEqual((await m.logprobs(batch)).seqLogps);
      // the scaling changes the model's output: the same weights with plain RoPE give other log-probs
      const { ropeScaling: _, ...plain } = config;
      const unscaled = await EngineModel.create(plain, 4);
      expect((await unscaled.logprobs(batch)).seqLogps).not.toEqual((await m.logprobs(batch)).seqLogps);
      await Promise.all([m.dispose(), loaded.dispose(), unscaled.dispose()]);
    }
    await expect(EngineModel.create({ ...llama3, ropeScaling: { type: "yarn" as "linear", factor: 2 } }, 1)).rejects.toThrow(
      /config.ropeScaling.type must be 'linear' or 'llama3'/,
    );
    await expect(EngineModel.create({ ...llama3, ropeScaling: { ...llama3.ropeScaling, lowFreqFactor: 5 } }, 1)).rejects.toThrow(
      /0 < low_freq_factor < high_freq_factor/,
    );
  });

  it("reads a model directory's config as load() does, without the weights", async () => {
    // a multimodal Gemma 3 checkpoint: its language model's config, as loading the weights gives it
    const dir = join(import.meta.dirname, "..", "native", "test", "fixtures", "parity", "gemma3_mm");
    const config = await readModelConfig(dir);
    expect(config).toMatchObject({ arch: "gemma3_text", vocabSize: 64, nLayer: 3, slidingWindow: 4 });
    const loaded = await EngineModel.load(dir);
    expect(config).toEqual(loaded.config);
    await loaded.dispose();
    await expect(readModelConfig(join(tempDir(), "missing"))).rejects.toThrow(/not a directory/);
    await expect(readModelConfig("")).rejects.toThrow(/readModelConfig\(dir\): dir must be a non-empty string/);
  });

  it("creates Mistral models: a sliding window on every layer (or none) that survives a save and a load", async () => {
    const mistral = {
      arch: "mistral" as const, vocabSize: 50, dModel: 16, nLayer: 2, nHead: 2, nKvHead: 1, dFf: 32, maxPositions: 64,
    };
    const windowed = { ...mistral, slidingWindow: 2 };
    const plain = await EngineModel.create(mistral, 4);
    const slid = await EngineModel.create(windowed, 4);
    expect(plain.config.slidingWindow).toBeUndefined();
    expect(slid.config).toMatchObject({ slidingWindow: 2, layerTypes: ["sliding_attention", "sliding_attention"], normEps: 1e-6 });
    const batch = pairBatch();
    // the same weights: the window alone changes what each query sees
    expect((await slid.logprobs(batch)).seqLogps).not.toEqual((await plain.logprobs(batch)).seqLogps);
    const dir = join(tempDir(), "ckpt-mistral");
    await slid.save(dir);
    const loaded = await EngineModel.load(dir);
    expect(loaded.config).toEqual(slid.config);
    expect((await loaded.logprobs(batch)).seqLogps).toEqual((await slid.logprobs(batch)).seqLogps);
    await Promise.all([plain.dispose(), slid.dispose(), loaded.dispose()]);
    await expect(
      EngineModel.create({ ...windowed, layerTypes: ["sliding_attention", "full_attention"] }, 1),
    ).rejects.toThrow(/Mistral's window applies to every layer/);
    await expect(EngineModel.create({ ...mistral, layerTypes: ["sliding_attention", "sliding_attention"] }, 1)).rejects.toThrow(
      /layerTypes needs slidingWindow/,
    );
    await expect(EngineModel.create({ ...mistral, qkvBias: true }, 1)).rejects.toThrow(/Mistral's attention has no biases/);
  });

  it("weights + optimizer state saved mid-training continue exactly like the uninterrupted model", async () => {
    const m = await EngineModel.create(tiny, 6);
    const step = { loss: "dpo" as const, batch: pairBatch(), chosen: [0, 2], rejected: [1, 3], refChosen: [-20, -20], refRejected: [-20, -20], optimizer: { lr: 1e-2 } };
    await m.trainStep(step);
    const dir = join(tempDir(), "resume");
    await m.save(dir);
    await m.saveOptimizerState(dir);
    const resumed = await EngineModel.load(dir);
    await resumed.loadOptimizerState(dir);
    const a = await m.trainStep(step);
    const b = await resumed.trainStep(step);
    expect(b.loss).toBe(a.loss);
    expect(await resumed.getParams()).toEqual(await m.getParams());
    const other = await EngineModel.create({ ...tiny, dModel: 32 }, 1);
    await expect(other.loadOptimizerState(dir)).rejects.toThrow(/saved for a model with/);
    await Promise.all([m.dispose(), resumed.dispose(), other.dispose()]);
  });

  it("clone() is an equal, independent copy", async () => {
    const m = await EngineModel.create(tiny, 4);
    const c = await m.clone();
    expect(await c.getParams()).toEqual(await m.getParams());
    const p = await m.getParams();
    p[0] = (p[0] ?? 0) + 1;
    await m.setParams(p);
    expect((await m.getParams())[0]).toBe(p[0]);
    expect((await c.getParams())[0]).not.toBe(p[0]);
  });
});

describe("training", () => {
  it("DPO steps against a frozen reference reduce the loss", async () => {
    const policy = await EngineModel.create(tiny, 5);
    const ref = await policy.clone();
    const batch = pairBatch();
    const step = () =>
      policy.trainStep({ loss: "dpo", batch, chosen: [0, 2], rejected: [1, 3], refModel: ref, beta: 0.5, optimizer: { lr: 3e-3 } });

    const first = await step();
    // Policy == reference: every implicit reward is 0, so the loss is log 2.
    expect(first.loss).toBeCloseTo(Math.log(2), 4);
    expect(first.margin).toBeCloseTo(0, 5);
    expect(first.nPairs).toBe(2);
    expect(first.nTokens).toBe(4 + 2 + 3 + 5);
    expect(first.gradNorm).toBeGreaterThan(0);
    let last = first;
    for (let i = 0; i < 5; i++) last = await step();
    expect(last.loss).toBeLessThan(first.loss - 0.05);
    expect(last.margin).toBeGreaterThan(0);
    expect(last.accuracy).toBe(1);
  });

  it("precomputed reference log-probs give the same step as a reference model", async () => {
    const a = await EngineModel.create(tiny, 6);
    const b = await EngineModel.create(tiny, 6);
    const ref = await a.clone();
    const batch = pairBatch();
    const refLp = (await ref.logprobs(batch)).seqLogps;
    const common = { loss: "dpo" as const, batch, chosen: [0, 2], rejected: [1, 3], optimizer: { lr: 1e-3 } };
    const sa = await a.trainStep({ ...common, refModel: ref });
    const sb = await b.trainStep({ ...common, refChosen: [refLp[0] ?? 0, refLp[2] ?? 0], refRejected: [refLp[1] ?? 0, refLp[3] ?? 0] });
    expect(sb.loss).toBeCloseTo(sa.loss, 6);
    const pa = await a.getParams();
    const pb = await b.getParams();
    let maxDiff = 0;
    for (let i = 0; i < pa.length; i++) maxDiff = Math.max(maxDiff, Math.abs((pa[i] ?? 0) - (pb[i] ?? 0)));
    expect(maxDiff).toBeLessThan(1e-6);
  });
});

describe("sampling", () => {
  it("returns K responses per prompt with matching offsets, log-probs and flags", async () => {
    const m = await EngineModel.create(tiny, 7);
    const r = await m.sample({ prompts: [[1, 2, 3], [4]], nSamples: 3, maxNewTokens: 5, seed: 11 });
    expect(r.offsets.length).toBe(2 * 3 + 1);
    expect(r.offsets[0]).toBe(0);
    expect(r.offsets[6]).toBe(r.tokens.length);
    expect(r.tokenLogps.length).toBe(r.tokens.length);
    expect(r.finished.length).toBe(6);
    for (let i = 0; i < 6; i++) {
      const len = (r.offsets[i + 1] ?? 0) - (r.offsets[i] ?? 0);
      expect(len).toBe(5); // no stop tokens: every response runs to maxNewTokens
      expect(r.finished[i]).toBe(0);
    }
    for (const t of r.tokens) expect(t >= 0 && t < tiny.vocabSize).toBe(true);
    for (const lp of r.tokenLogps) expect(lp <= 0 && Number.isFinite(lp)).toBe(true);

    // Same seed, same samples.
    const again = await m.sample({ prompts: [[1, 2, 3], [4]], nSamples: 3, maxNewTokens: 5, seed: 11 });
    expect(again.tokens).toEqual(r.tokens);
  });

  it("stops a response at a stop token and keeps it", async () => {
    const m = await EngineModel.create(tiny, 8);
    const everyToken = Array.from({ length: tiny.vocabSize }, (_, i) => i);
    const r = await m.sample({ prompts: [[1, 2]], nSamples: 4, maxNewTokens: 6, stopTokens: everyToken, seed: 1 });
    expect(Array.from(r.offsets)).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(r.finished)).toEqual([1, 1, 1, 1]);
  });
});

describe("errors", () => {
  it("rejects a temperature whose reciprocal overflows float, and takes a tiny one", async () => {
    const m = await EngineModel.create(tiny, 9);
    const request = { prompts: [[1, 2]], nSamples: 2, maxNewTokens: 3, seed: 1 };
    await expect(m.sample({ ...request, temperature: 1e-39 })).rejects.toThrow(
      /sample: temperature 1e-39 is too small \(1 \/ temperature overflows float\); use 0 for greedy decoding/,
    );
    expect((await m.sample({ ...request, temperature: 1e-30 })).tokens.length).toBe(6);
    await expect(m.sample({ ...request, temperature: 1e40 })).rejects.toThrow(
      "request.temperature = 1e+40 is beyond float range (|x| <= 3.4e38)",
    );
  });

  it("rejects a wrong typed array type", async () => {
    const m = await EngineModel.create(tiny, 9);
    const b = pairBatch();
    const bad = { ...b, tokens: Float32Array.from(b.tokens) } as unknown as Batch;
    await expect(m.logprobs(bad)).rejects.toThrow(/batch\.tokens must be an Int32Array, got a Float32Array/);
    await expect(m.logprobs(bad)).rejects.toBeInstanceOf(TypeError);
  });

  it("rejects an out-of-range token id with the core's message", async () => {
    const m = await EngineModel.create(tiny, 9);
    const b = packBatch([{ prompt: [1, 2], response: [3, 99] }]);
    await expect(m.logprobs(b)).rejects.toThrow(/token id 99.*vocabulary/);
    // The model still works afterwards.
    await expect(m.logprobs(pairBatch())).resolves.toBeDefined();
  });

  it("rejects offsets that do not match the tokens", async () => {
    const m = await EngineModel.create(tiny, 9);
    const b = pairBatch();
    await expect(m.logprobs({ ...b, offsets: b.offsets.subarray(0, 3) })).rejects.toThrow(/offsets has 3 entries/);
    const shifted = Int32Array.from(b.offsets);
    shifted[shifted.length - 1] = b.tokens.length + 2;
    await expect(m.logprobs({ ...b, offsets: shifted })).rejects.toThrow(/offsets must start at 0 and end at/);
  });

  it("rejects non-finite weights and reference log-probs", async () => {
    const m = await EngineModel.create(tiny, 9);
    const req = { loss: "dpo" as const, batch: pairBatch(), chosen: [0, 2], rejected: [1, 3], refChosen: [-1, -1], refRejected: [-1, -1] };
    await expect(m.trainStep({ ...req, weights: [1, Number.NaN] })).rejects.toThrow(/weights\[1\] is NaN; all values must be finite/);
    await expect(m.trainStep({ ...req, refChosen: [-1, Number.POSITIVE_INFINITY] })).rejects.toThrow(/refChosen\[1\]/);
    await expect(m.trainStep({ ...req, loss: "kto" as unknown as "dpo" })).rejects.toThrow(/request\.loss must be 'sft', 'dpo', 'ipo', 'hinge', 'simpo' or 'bt', got 'kto'/);
    // a reference that cannot take the batch is named as the reference
    const shortRef = await EngineModel.create({ ...tiny, maxPositions: 4 }, 9);
    await expect(m.trainStep({ loss: "dpo", batch: pairBatch(), chosen: [0, 2], rejected: [1, 3], refModel: shortRef })).rejects.toThrow(
      /^the reference model: batch: sequence \d+ has \d+ tokens, more than the model's max_positions 4/,
    );
    // a misspelt optimizer field was ignored (training ran at the default learning rate)
    await expect(m.trainStep({ ...req, optimizer: { learningRate: 1 } as never })).rejects.toThrow(
      "optimizer has unknown field(s) learningRate; known: lr, beta1, beta2, eps, weightDecay, maxGradNorm, warmupSteps",
    );
    await expect(m.trainStep({ ...req, optimizer: { warmupSteps: -1 } })).rejects.toThrow(/warmupSteps/);
  });

  it("trains with hinge and label-smoothed DPO, whose losses follow their formulas", async () => {
    const m = await EngineModel.create(tiny, 9);
    const batch = pairBatch();
    const lp = (await m.logprobs(batch)).seqLogps;
    // references put h = (lp_c - ref_c) - (lp_r - ref_r) at 1 and -2 for the two pairs
    const req = { batch, chosen: [0, 2], rejected: [1, 3], refChosen: [lp[0]! - 1, lp[2]!], refRejected: [lp[1]!, lp[3]! - 2] };
    const h = [1, -2];
    const frozen = { applyUpdate: false, beta: 0.5 };
    const hinge = await m.trainStep({ ...req, ...frozen, loss: "hinge" });
    expect(hinge.loss).toBeCloseTo(h.map((x) => Math.max(0, 1 - 0.5 * x)).reduce((a, b) => a + b) / 2, 5);
    const logsig = (x: number) => -Math.log1p(Math.exp(-x));
    const smoothed = await m.trainStep({ ...req, ...frozen, loss: "dpo", labelSmoothing: 0.1 });
    const want = h.map((x) => -0.9 * logsig(0.5 * x) - 0.1 * logsig(-0.5 * x)).reduce((a, b) => a + b) / 2;
    expect(smoothed.loss).toBeCloseTo(want, 5);
    await expect(m.trainStep({ ...req, ...frozen, loss: "ipo", labelSmoothing: 0.1 })).rejects.toThrow(/is for DPO and SimPO only/);
    // SimPO: mean token log-probs, no reference
    const nTokens = [0, 1, 2, 3].map((s) => batch.offsets[s + 1]! - batch.offsets[s]! - batch.promptLens[s]!);
    const simpo = await m.trainStep({ batch, chosen: [0, 2], rejected: [1, 3], ...frozen, loss: "simpo", simpoGamma: 0.3 });
    const z = [0, 1].map((j) => 0.5 * (lp[2 * j]! / nTokens[2 * j]! - lp[2 * j + 1]! / nTokens[2 * j + 1]!) - 0.3);
    expect(simpo.loss).toBeCloseTo(z.map((x) => -logsig(x)).reduce((a, b) => a + b) / 2, 5);
    await expect(m.trainStep({ ...req, ...frozen, loss: "simpo" })).rejects.toThrow(/SimPO uses no reference/);
  });

  it("warms the learning rate up over the first optimizer steps (warmupSteps), as by hand", async () => {
    const warm = await EngineModel.create(tiny, 9);
    const byHand = await EngineModel.create(tiny, 9);
    const req = { loss: "dpo" as const, batch: pairBatch(), chosen: [0, 2], rejected: [1, 3], refChosen: [-1, -1], refRejected: [-1, -1] };
    for (let t = 1; t <= 3; t++) {
      await warm.trainStep({ ...req, optimizer: { lr: 0.01, warmupSteps: 2 } });
      await byHand.trainStep({ ...req, optimizer: { lr: t < 2 ? Math.fround(0.01) / 2 : 0.01 } });
      expect(await warm.getParams()).toEqual(await byHand.getParams());
    }
  });

  it("refuses NaN or Infinity in setParams, and a rope_theta beyond float range", async () => {
    const m = await EngineModel.create(tiny, 9);
    const params = await m.getParams();
    const bad = params.slice();
    bad[3] = Number.NaN;
    await expect(m.setParams(bad)).rejects.toThrow(/params\[3\] is NaN; all values must be finite/);
    bad[3] = 1e39; // beyond float: Infinity once stored as float32
    await expect(m.setParams(bad)).rejects.toThrow(/params\[3\] is Infinity/);
    expect(await m.getParams()).toEqual(params); // unchanged
    const llama = { arch: "llama" as const, vocabSize: 32, dModel: 16, nLayer: 1, nHead: 2, dFf: 32, maxPositions: 16 };
    await expect(EngineModel.create({ ...llama, ropeTheta: 1e39 }, 1)).rejects.toThrow(
      "config.ropeTheta = 1e+39 is beyond float range (|x| <= 3.4e38)",
    );
  });

  it("rejects calls on a disposed model", async () => {
    const m = await EngineModel.create(tiny, 9);
    await m.dispose();
    expect(m.disposed).toBe(true);
    await expect(m.logprobs(pairBatch())).rejects.toThrow(/model has been disposed/);
    const live = await EngineModel.create(tiny, 9);
    await expect(
      live.trainStep({ loss: "dpo", batch: pairBatch(), chosen: [0], rejected: [1], refModel: m }),
    ).rejects.toThrow(/refModel has been disposed/);
  });

  it("errors are JS Errors with the same messages at the raw addon level", async () => {
    const { loadAddon } = await import("../src/engine/index.js");
    const addon = loadAddon();
    const m = await addon.createModel(tiny, 1);
    const b = pairBatch();
    // Non-finite weights are caught before the work is queued.
    const req = { loss: "dpo" as const, batch: b, chosen: Int32Array.of(0), rejected: Int32Array.of(1), refChosen: Float32Array.of(-1), refRejected: Float32Array.of(-1) };
    await expect(m.trainStep({ ...req, weights: Float32Array.of(Number.NaN) })).rejects.toThrow(/request\.weights\[0\] is NaN; all values must be finite/);
    await expect(m.trainStep({ ...req, chosen: [0] as unknown as Int32Array })).rejects.toThrow(/request\.chosen must be an Int32Array, got an Array/);
    // A second call while one runs is refused with a clear message.
    const first = m.logprobs(b);
    await expect(m.logprobs(b)).rejects.toThrow("model is busy with logprobs; await the previous call");
    await first;
    // getParams and setParams run on the engine thread too (Promises), and hold the model meanwhile.
    const params = m.getParams();
    expect(params).toBeInstanceOf(Promise);
    await expect(m.logprobs(b)).rejects.toThrow("model is busy with getParams; await the previous call");
    const values = await params;
    const set = m.setParams(values.map((v) => v * 2));
    await expect(m.logprobs(b)).rejects.toThrow("model is busy with setParams; await the previous call");
    await set;
    expect(Array.from(await m.getParams())).toEqual(Array.from(values.map((v) => v * 2)));
    await expect(m.setParams(new Float64Array(values) as unknown as Float32Array)).rejects.toThrow(
      /params must be a Float32Array, got a Float64Array/,
    );
    // dispose() during a call frees the model after it; the running call still completes.
    const running = m.logprobs(b);
    m.dispose();
    await expect(running).resolves.toHaveProperty("seqLogps");
    expect(m.disposed).toBe(true);
    await expect(m.logprobs(b)).rejects.toThrow(/disposed/);
    expect(() => new (addon as unknown as { Model: new () => unknown }).Model()).toThrow(/cannot be constructed directly/);
  });
});

describe("queueing", () => {
  it("concurrent calls give the same results as sequential ones", async () => {
    const batch = pairBatch();
    const dpo = { loss: "dpo" as const, batch, chosen: [0, 2], rejected: [1, 3], optimizer: { lr: 1e-3 } };

    const seqPolicy = await EngineModel.create(tiny, 10);
    const seqRef = await seqPolicy.clone();
    const sequential = [];
    sequential.push(await seqPolicy.logprobs(batch));
    sequential.push(await seqPolicy.trainStep({ ...dpo, refModel: seqRef }));
    sequential.push(await seqRef.logprobs(batch));
    sequential.push(await seqPolicy.trainStep({ ...dpo, refModel: seqRef }));
    sequential.push(await seqPolicy.logprobs(batch));

    const policy = await EngineModel.create(tiny, 10);
    const ref = await policy.clone();
    const concurrent = await Promise.all([
      policy.logprobs(batch),
      policy.trainStep({ ...dpo, refModel: ref }),
      ref.logprobs(batch),
      policy.trainStep({ ...dpo, refModel: ref }),
      policy.logprobs(batch),
    ]);
    expectClose(concurrent, sequential);
    expectClose(await policy.getParams(), await seqPolicy.getParams());
  });

  it("an error inside one engine call leaves the engine thread serving the others", async () => {
    const a = await EngineModel.create(tiny, 11);
    const b = await EngineModel.create(tiny, 12);
    const batch = pairBatch();
    const want = await b.logprobs(batch);
    // maxNewTokens past maxPositions fails inside the engine call, between two good calls on another model
    const [bad, good] = await Promise.allSettled([
      a.sample({ prompts: [[1, 2, 3]], maxNewTokens: 100000, temperature: 0, seed: 1 }),
      b.logprobs(batch),
    ]);
    expect(bad.status).toBe("rejected");
    expect(String((bad as PromiseRejectedResult).reason)).toMatch(/max_positions|maxNewTokens/);
    expect(good.status).toBe("fulfilled");
    expectClose((good as PromiseFulfilledResult<typeof want>).value, want);
    // the failed model itself works afterwards
    await expect(a.logprobs(batch)).resolves.toHaveProperty("seqLogps");
    await Promise.all([a.dispose(), b.dispose()]);
  });
});

describe("event loop", () => {
  it("keeps firing timers while a long engine call runs", async () => {
    const m = await EngineModel.create({ arch: "gpt2", vocabSize: 2000, dModel: 256, nLayer: 4, nHead: 4, dFf: 1024, maxPositions: 512 }, 12);
    // About 0.5 s of training on 2 cores; doubled on faster machines until the call takes long enough to tell.
    const batchOf = (n: number) =>
      packBatch(
        Array.from({ length: n }, (_, i) => ({
          prompt: Array.from({ length: 32 }, (_, j) => (i * 31 + j) % 2000),
          response: Array.from({ length: 160 }, (_, j) => (i * 17 + j * 7) % 2000),
        })),
      );
    let ms = 0;
    let ticks = 0;
    for (let n = 4; n <= 64 && ms < 300; n *= 2) {
      const batch = batchOf(n);
      ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      const t0 = performance.now();
      try {
        await m.trainStep({ loss: "sft", batch, optimizer: { lr: 1e-4 } });
      } finally {
        clearInterval(timer);
      }
      ms = performance.now() - t0;
    }
    // A blocked event loop would tick at most once or twice during the call.
    expect(ms).toBeGreaterThanOrEqual(300);
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(ms / 5 / 4));
  });
});
