// The smallest GPT-2 model the engine tests use (not a test file itself): shared by the engine and device tests.
import type { ModelConfigInput } from "../src/engine/index.js";

export const TINY_MODEL: ModelConfigInput = {
  arch: "gpt2",
  vocabSize: 50,
  dModel: 16,
  nLayer: 2,
  nHead: 2,
  dFf: 64,
  maxPositions: 64,
};
