// The engine: the native addon behind EngineModel. Other modules import from here, never from the addon itself.

export { addonPath, loadAddon, packageRoot } from "./addon.js";
export { packBatch, packPrompts, splitPacked, toFloat32Array, toInt32Array } from "./batch.js";
export type { PackedPrompts, SequenceInput } from "./batch.js";
export {
  DEFAULT_BETA,
  DEFAULT_OPTIMIZER,
  DEFAULT_SAMPLING,
  EngineModel,
  engineInfo,
  readLoraConfig,
  readModelConfig,
  setThreads,
} from "./model.js";
export type { SampleOptions, TrainStepOptions } from "./model.js";
export type * from "./types.js";
