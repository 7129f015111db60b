// Device placement through the TS engine wrapper. In a build without the CUDA backend (npm test's default) or on a
// machine without a GPU, asking for 'cuda' must reject with a clear message; 'auto' must fall to the CPU. With a
// GPU, the same calls place the model on it and it keeps working through the same API.

import { describe, expect, it } from "vitest";

import { type DeviceName, EngineModel, engineInfo, packBatch } from "../src/engine/index.js";

import { TINY_MODEL } from "./tiny_model.js";

const tiny = TINY_MODEL;

const info = engineInfo();
const hasGpu = info.devices.length > 0;

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
    const why = info.backends.includes("cuda") ? /no CUDA GPU is visible/ : /this build of optune has no CUDA backend/;
    await expect(EngineModel.create(tiny, 1, { device: "cuda" })).rejects.toThrow(why);
    await expect(EngineModel.create(tiny, 1, { device: "cuda", precision: "bf16" })).rejects.toThrow(why);
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
