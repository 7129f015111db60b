// Device placement through the TS engine wrapper. In a build without the CUDA backend (npm test's default) or on a
// machine without a GPU, asking for 'cuda' must reject with a clear message; 'auto' must fall to the CPU. With a
// GPU, the same calls place the model on it and it keeps working through the same API.

import { describe, expect, it } from "vitest";

import { describeGpu } from "../src/cli/info.js";
import { type DeviceName, EngineModel, engineInfo, packBatch } from "../src/engine/index.js";

import { TINY_MODEL } from "./tiny_model.js";

const tiny = TINY_MODEL;

const info = engineInfo();
// The engine uses the first visible GPU, when its kernels can run there.
const hasGpu = info.devices.length > 0 && info.devices[0]!.unusable === null;

describe("device placement", () => {
  it("puts models on the CPU by default and with device 'cpu'", async () => {
    for (const options of [undefined, { device: "cpu" as const }]) {
      const m = await EngineModel.create(tiny, 1, options);
      expect(m.device).toBe("cpu");
      expect(m.precision).toBe("fp32");
      m.dispose();
    }
  });

  it("'auto' picks the GPU only when there is one", async () => {
    const m = await EngineModel.create(tiny, 1, { device: "auto" });
    expect(m.device).toBe(hasGpu ? "cuda" : "cpu");
    m.dispose();
  });

  it.skipIf(hasGpu)("'cuda' without the backend or a GPU rejects with the reason (no silent fallback)", async () => {
    const why = !info.backends.includes("cuda")
      ? /this build of optune has no CUDA backend/
      : info.devices.length > 0
        ? /cannot run optune's CUDA kernels/
        : /no CUDA GPU is visible/;
    await expect(EngineModel.create(tiny, 1, { device: "cuda" })).rejects.toThrow(why);
    await expect(EngineModel.create(tiny, 1, { device: "cuda", precision: "bf16" })).rejects.toThrow(why);
  });

  it("optune info lists each GPU, its free memory where known, and why the kernels cannot run on it", () => {
    const gib = 2 ** 30;
    const h100 = { index: 0, name: "NVIDIA H100", computeCapability: "9.0", totalMemory: 80 * gib };
    expect(describeGpu({ ...h100, freeMemory: 79 * gib, unusable: null })).toBe(
      "cuda:0 NVIDIA H100, compute capability 9.0, 80.0 GiB (79.0 GiB free)",
    );
    const t4 = { index: 1, name: "Tesla T4", computeCapability: "7.5", totalMemory: 15 * gib, freeMemory: null };
    expect(describeGpu({ ...t4, unusable: "its compute capability 7.5 is below the 8.0 ..." })).toBe(
      "cuda:1 Tesla T4, compute capability 7.5, 15.0 GiB; unusable: its compute capability 7.5 is below the 8.0 ...",
    );
  });

  it("refuses unknown names", async () => {
    await expect(EngineModel.create(tiny, 1, { device: "gpu" as DeviceName })).rejects.toThrow(
      /options.device must be 'cpu', 'cuda' or 'auto'/,
    );
  });

  it("bf16 on the CPU samples and trains in bf16, keeps log-probs fp32, and clones keep it", async () => {
    const fp32 = await EngineModel.create(tiny, 5);
    const bf16 = await EngineModel.create(tiny, 5, { device: "cpu", precision: "bf16" });
    expect(bf16.device).toBe("cpu");
    expect(bf16.precision).toBe("bf16");
    const batch = packBatch([
      { prompt: [1, 2, 3], response: [4, 5, 6] },
      { prompt: [7, 8], response: [9, 10, 11, 12] },
    ]);
    expect((await bf16.logprobs(batch)).tokenLogps).toEqual((await fp32.logprobs(batch)).tokenLogps);
    const request = { prompts: [[1, 2, 3]], nSamples: 4, maxNewTokens: 8, seed: 9 };
    const a = await fp32.sample(request);
    const b = await bf16.sample(request);
    expect(b.tokenLogps).not.toEqual(a.tokenLogps);  // rounded products: close, not bitwise equal
    const step = { loss: "sft" as const, batch, optimizer: { lr: 1e-3 } };
    const sa = await fp32.trainStep(step);
    const sb = await bf16.trainStep(step);
    expect(sb.loss).toBeCloseTo(sa.loss, 2);
    expect(sb.gradNorm).not.toBe(sa.gradNorm);
    const c = await bf16.clone();
    expect(c.precision).toBe("bf16");
    for (const m of [fp32, bf16, c]) m.dispose();
  });

  it.runIf(hasGpu)("runs the same calls on the GPU as on the CPU", async () => {
    const cpu = await EngineModel.create(tiny, 3);
    const gpu = await EngineModel.create(tiny, 3, { device: "cuda" });
    expect(gpu.device).toBe("cuda");
    const batch = packBatch([
      { prompt: [1, 2, 3], response: [4, 5, 6] },
      { prompt: [7, 8], response: [9, 10, 11, 12] },
    ]);
    const a = await cpu.logprobs(batch);
    const b = await gpu.logprobs(batch);
    for (let i = 0; i < a.tokenLogps.length; i++) expect(b.tokenLogps[i]).toBeCloseTo(a.tokenLogps[i] ?? 0, 4);
    const ref = await gpu.clone();
    expect(ref.device).toBe("cuda");
    expect(gpu.getParams()).toEqual(cpu.getParams());
    for (const m of [cpu, gpu, ref]) m.dispose();
  });
});
