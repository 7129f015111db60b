// The built-in task shrunk so that preparing it and running two iterations take about a second: shared by the
// loop, bench and bad-input tests (not a test file itself).
import type { ConfigInput } from "../src/config/schema.js";

export const TINY_TASK = {
  prepare: {
    trainPrompts: 60,
    heldOutPrompts: 12,
    dModel: 16,
    nLayer: 1,
    nHead: 2,
    dFf: 32,
    sftEpochs: 2,
    sftBatch: 16,
    rewardEpochs: 1,
    rewardPolicySamples: 2,
    rewardBatch: 16,
  },
  loop: { iterations: 2, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, tieThreshold: 0 },
  eval: { prompts: 8, samples: 2 },
} satisfies ConfigInput;
