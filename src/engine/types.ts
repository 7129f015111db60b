// Types of the native addon (build/Release/optune.node) and of the engine wrapper built on it.
// Field names are the addon's; the C++ side (native/addon/convert.cpp) checks every one of them again.

export type Arch = "gpt2" | "llama" | "qwen2" | "qwen3" | "gemma3_text" | "smollm3" | "olmo2" | "mistral";
export type LossName = "sft" | "dpo" | "ipo" | "hinge" | "simpo" | "bt";

/** A decoder-only transformer, as the engine describes it (native/core/config.h). */
export interface ModelConfig {
  arch: Arch;
  vocabSize: number;
  dModel: number;
  nLayer: number;
  nHead: number;
  nKvHead: number;
  headDim: number;
  dFf: number;
  maxPositions: number;
  normEps: number;
  ropeTheta: number;
  tieEmbeddings: boolean;
  qkvBias: boolean;
  oBias: boolean;
  rewardModel: boolean;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  /**
   * RoPE scaling (transformers' rope_type "linear" or "llama3" and its fields); absent for plain RoPE. Gemma 3
   * applies it on its full-attention layers only.
   */
  ropeScaling?: {
    type: "linear" | "llama3";
    factor: number;
    lowFreqFactor?: number;
    highFreqFactor?: number;
    originalMaxPositions?: number;
  };
  /** gemma3_text only: attention scores scale by queryPreAttnScalar^-1/2 (transformers' query_pre_attn_scalar). */
  queryPreAttnScalar?: number;
  /**
   * gemma3_text, smollm3 (with layerTypes) and mistral (every layer; absent: no window): positions a sliding-window
   * layer's query sees, itself included.
   */
  slidingWindow?: number;
  /** gemma3_text only: the RoPE base of the sliding-window layers (ropeTheta is the full layers'). */
  ropeLocalTheta?: number;
  /** gemma3_text (always), smollm3 and mistral (when they have sliding-window layers): each layer's attention. */
  layerTypes?: ("sliding_attention" | "full_attention")[];
  /** smollm3 only: per layer, 1 when it rotates q and k (RoPE), 0 for a NoPE layer (transformers' no_rope_layers). */
  noRopeLayers?: number[];
}

/** What createModel needs; the rest defaults (nKvHead = nHead, headDim = dModel / nHead, qkvBias for qwen2, ...). */
export type ModelConfigInput = Pick<ModelConfig, "arch" | "vocabSize" | "dModel" | "nLayer" | "nHead" | "dFf" | "maxPositions"> &
  Partial<ModelConfig>;

/**
 * Sequences packed back to back: sequence i is tokens[offsets[i] .. offsets[i+1]), its first promptLens[i] tokens
 * are the prompt (at least 1), the rest the response.
 */
export interface Batch {
  tokens: Int32Array;
  offsets: Int32Array;
  promptLens: Int32Array;
}

export interface LogprobResult {
  /** One per response token, sequence 0's first. */
  tokenLogps: Float32Array;
  /** Per sequence: the sum of its response token log-probs (0 for an empty response). */
  seqLogps: Float32Array;
}

export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled; matrices and embeddings only. */
  weightDecay: number;
  /** Global L2 norm clipping; <= 0 disables. */
  maxGradNorm: number;
  /** Linear warmup: optimizer step t (1-based, counted by the model) uses lr * min(1, t / warmupSteps); 0 = off. */
  warmupSteps: number;
}

export interface TrainStats {
  loss: number;
  /** Mean beta * (logp_c - ref_c); BT: mean score of chosen. */
  chosenReward: number;
  rejectedReward: number;
  margin: number;
  /** Fraction of pairs with chosenReward > rejectedReward. */
  accuracy: number;
  /** Global gradient L2 norm before clipping. */
  gradNorm: number;
  nPairs: number;
  nTokens: number;
}

export interface SampleResult {
  /** nPrompts * nSamples responses, prompt-major, packed back to back. */
  tokens: Int32Array;
  /** nResponses + 1. */
  offsets: Int32Array;
  /** Log-prob of each sampled token under the model (temperature 1, unfiltered). */
  tokenLogps: Float32Array;
  /** 1 when the response ended with a stop token, 0 when it hit maxNewTokens. */
  finished: Uint8Array;
}

/** Where a model runs: "auto" picks "cuda" when the engine was built with it and a GPU is visible, else "cpu". */
export type DeviceName = "cpu" | "cuda" | "auto";
/** CUDA only: "bf16" runs the matmuls on bf16 copies of weights and activations (fp32 master weights). */
export type PrecisionName = "fp32" | "bf16";

export interface DeviceOptions {
  device?: DeviceName;
  precision?: PrecisionName;
}

/** A GPU this process sees. */
export interface GpuDevice {
  index: number;
  name: string;
  /** "9.0" for an H100. */
  computeCapability: string;
  /** Bytes. */
  totalMemory: number;
  /** Bytes; known for the device the engine uses (the first visible one), null for the others. */
  freeMemory: number | null;
  /** Why the engine's kernels cannot run on it (compute capability below 8.0; for the device the engine uses, also a
   * build without its code or a driver too old for it); null when nothing was found. */
  unusable: string | null;
}

export interface EngineInfo {
  version: string;
  /** "cpu", plus "cuda" when the engine was built with the CUDA backend. */
  backends: string[];
  /** The CUDA architectures the backend holds code for ("80,90", as CMAKE_CUDA_ARCHITECTURES); null without it. */
  cudaArchs: string | null;
  /** "openblas" or "builtin". */
  blas: string;
  /** CPU precision "bf16" runs on AVX512-BF16 instructions (else a portable loop, slower than fp32). */
  bf16Native: boolean;
  threads: number;
  /** GPUs usable by the CUDA backend; empty without it, a driver or a GPU. */
  devices: GpuDevice[];
}

// ---- the raw addon ---------------------------------------------------------------------------------------------

export interface NativeTrainRequest {
  loss: LossName;
  batch: Batch;
  chosen?: Int32Array;
  rejected?: Int32Array;
  weights?: Float32Array;
  refChosen?: Float32Array;
  refRejected?: Float32Array;
  refModel?: NativeModel;
  beta?: number;
  labelSmoothing?: number;
  simpoGamma?: number;
  optimizer?: Partial<AdamWOptions>;
  applyUpdate?: boolean;
}

export interface NativeSampleRequest {
  promptTokens: Int32Array;
  promptOffsets: Int32Array;
  nSamples?: number;
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  stopTokens?: Int32Array;
  vocabLimit?: number;
  seed?: number | bigint;
  streamIds?: BigUint64Array;
}

/** LoRA settings (native/core/lora.h); `targets` as PEFT's target_modules, or ["all-linear"]. */
export interface LoraOptions {
  rank: number;
  alpha: number;
  targets: readonly string[];
  /** Seed of A's initialization (B starts at zero). */
  seed?: number | bigint;
}

/** What enableLora made. */
export interface LoraInfo {
  rank: number;
  alpha: number;
  /** The targeted modules, e.g. "model.layers.0.self_attn.q_proj". */
  modules: string[];
  /** Floats trained: every A and B. */
  trainableParams: number;
}

/** One native model. A second call while one runs rejects: EngineModel queues calls instead. */
export interface NativeModel {
  readonly config: ModelConfig;
  readonly numParams: number;
  readonly device: "cpu" | "cuda";
  readonly precision: PrecisionName;
  readonly disposed: boolean;
  /** Name of the running operation, or null. */
  readonly busyWith: string | null;
  save(dir: string): Promise<void>;
  saveOptimizerState(dir: string): Promise<void>;
  loadOptimizerState(dir: string): Promise<void>;
  clone(): Promise<NativeModel>;
  /** base: a LoRA model's base alone (its adapters off). */
  logprobs(batch: Batch, base?: boolean): Promise<LogprobResult>;
  logits(batch: Batch): Promise<Float32Array>;
  scores(batch: Batch): Promise<Float32Array>;
  trainStep(request: NativeTrainRequest): Promise<TrainStats>;
  checkTrainingMemory(): Promise<void>;
  sample(request: NativeSampleRequest, base?: boolean): Promise<SampleResult>;
  enableLora(options: LoraOptions): Promise<LoraInfo>;
  loadLoraAdapter(dir: string): Promise<void>;
  saveLoraAdapter(dir: string): Promise<void>;
  fingerprint(): Promise<string>;
  dispose(): void;
  getParams(): Promise<Float32Array>;
  /** Reads `params` in place on the engine thread: it must not change until the Promise settles. */
  setParams(params: Float32Array): Promise<void>;
}

export interface NativeAddon {
  info(): EngineInfo;
  setThreads(n: number): void;
  createModel(config: ModelConfigInput, seed?: number | bigint, options?: DeviceOptions): Promise<NativeModel>;
  loadModel(dir: string, options?: DeviceOptions): Promise<NativeModel>;
  readModelConfig(dir: string): Promise<ModelConfig>;
  readLoraConfig(dir: string): Promise<LoraOptions>;
}
