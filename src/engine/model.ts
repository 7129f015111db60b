// EngineModel: the TS face of one native model. The native model runs one operation at a time and rejects a
// second, so every call here goes through a per-model promise queue and runs after the previous one settles.
// A trainStep with a reference model also takes a turn in the reference model's queue, so neither model is
// touched by another call while the step runs. Turns are taken synchronously in call order, so waits cannot cycle.

import { loadAddon } from "./addon.js";
import { type PackedPrompts, packPrompts, toFloat32Array, toInt32Array } from "./batch.js";
import type {
  AdamWOptions,
  Batch,
  DeviceOptions,
  EngineInfo,
  LogprobResult,
  LoraInfo,
  LoraOptions,
  LossName,
  ModelConfig,
  ModelConfigInput,
  NativeModel,
  NativeSampleRequest,
  NativeTrainRequest,
  PrecisionName,
  SampleResult,
  TrainStats,
} from "./types.js";

export const DEFAULT_BETA = 0.1;

export const DEFAULT_OPTIMIZER: Readonly<AdamWOptions> = {
  lr: 1e-5,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0,
  maxGradNorm: 0,
  warmupSteps: 0,
};

export const DEFAULT_SAMPLING: Readonly<Required<Pick<SampleOptions, "nSamples" | "maxNewTokens" | "temperature" | "topK" | "topP">>> = {
  nSamples: 1,
  maxNewTokens: 64,
  temperature: 1,
  topK: 0,
  topP: 1,
};

export interface TrainStepOptions {
  loss: LossName;
  batch: Batch;
  /** Pairwise losses: pair j compares sequences chosen[j] and rejected[j] of the batch. */
  chosen?: ArrayLike<number>;
  rejected?: ArrayLike<number>;
  /** Per pair (dpo/ipo/hinge/bt) or per sequence (sft); all 1 when absent. */
  weights?: ArrayLike<number>;
  /** Reference sequence log-probs per pair (dpo/ipo/hinge); otherwise refModel computes them. */
  refChosen?: ArrayLike<number>;
  refRejected?: ArrayLike<number>;
  refModel?: EngineModel;
  beta?: number;
  /** dpo and simpo: the assumed share of flipped preferences, in [0, 0.5) (conservative DPO); 0 when absent. */
  labelSmoothing?: number;
  /** simpo: the target margin gamma (default 0.5); SimPO takes no reference log-probs. */
  simpoGamma?: number;
  optimizer?: Partial<AdamWOptions>;
  /** false: compute loss and gradients only. */
  applyUpdate?: boolean;
}

export interface SampleOptions {
  /** Token ids per prompt, or prompts already packed. */
  prompts: readonly ArrayLike<number>[] | PackedPrompts;
  /** Responses per prompt. */
  nSamples?: number;
  maxNewTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  /** 0 = off. */
  topK?: number;
  /** 1 = off. */
  topP?: number;
  /** A response ends after it emits one of these (the stop token is kept). */
  stopTokens?: ArrayLike<number>;
  /**
   * Draw only token ids below this (0 or absent: the whole vocabulary), e.g. a tokenizer's size when the model's
   * vocabulary is padded past it. Returned log-probs stay over the whole vocabulary.
   */
  vocabLimit?: number;
  seed?: number | bigint;
  /** Per prompt, the key of its random stream: the same (seed, stream id) samples the same tokens in any batch. */
  streamIds?: ArrayLike<number | bigint>;
}

/** Version, backends, BLAS and thread count of the native engine. */
export function engineInfo(): EngineInfo {
  return loadAddon().info();
}

/**
 * A Hugging Face model directory's config.json as load() reads it (a multimodal Gemma 3: its language model),
 * without the weights: the same validation and errors.
 */
export function readModelConfig(dir: string): Promise<ModelConfig> {
  return loadAddon().readModelConfig(dir);
}

/**
 * A PEFT adapter directory's settings (adapter_config.json: r, lora_alpha, target_modules), for enableLora before
 * loadLoraAdapter; what optune's LoRA does not implement (DoRA, rsLoRA, ...) is refused with the field named.
 */
export function readLoraConfig(dir: string): Promise<LoraOptions> {
  return loadAddon().readLoraConfig(dir);
}

/** Threads the engine uses for each call (OpenMP). */
export function setThreads(n: number): void {
  loadAddon().setThreads(n);
}

/** The calls of one native model, in order. */
interface CallQueue {
  /** Settles when the last queued call has; never rejects. */
  tail: Promise<void>;
}

interface Reservation {
  /** Resolves when every earlier call on the model has settled. */
  turn: Promise<void>;
  /** Ends the reservation; later calls on the model may run. */
  done: () => void;
}

export class EngineModel {
  readonly config: ModelConfig;
  readonly numParams: number;
  /** Where the model runs ("auto" resolved) and its matmul precision. */
  readonly device: "cpu" | "cuda";
  readonly precision: PrecisionName;
  private readonly native: NativeModel;
  /** Calls run one at a time in this queue; a base view shares its model's. */
  private readonly queue: CallQueue;
  /** A LoRA model's base view (base()): its adapters are off for every call it makes. */
  private readonly isBaseView: boolean;
  private loraInfo: LoraInfo | null = null;
  private disposeRequested = false;

  private constructor(native: NativeModel, queue: CallQueue = { tail: Promise.resolve() }, isBaseView = false) {
    this.native = native;
    this.queue = queue;
    this.isBaseView = isBaseView;
    this.config = native.config;
    this.numParams = native.numParams;
    this.device = native.device;
    this.precision = native.precision;
  }

  /**
   * A model with transformers-style random init from `seed`, on `options.device` (default "cpu"). Asking for
   * "cuda" without the CUDA backend or a GPU rejects; there is no silent fallback ("auto" picks what exists).
   */
  static async create(
    config: ModelConfigInput,
    seed: number | bigint = 0,
    options: DeviceOptions = {},
  ): Promise<EngineModel> {
    return new EngineModel(await loadAddon().createModel(config, seed, deviceOptions(options)));
  }

  /** A transformers checkpoint directory (config.json + model.safetensors), on `options.device`. */
  static async load(dir: string, options: DeviceOptions = {}): Promise<EngineModel> {
    return new EngineModel(await loadAddon().loadModel(dir, deviceOptions(options)));
  }

  /** True once dispose() was called (the weights are freed after the calls queued before it). */
  get disposed(): boolean {
    return this.disposeRequested;
  }

  async save(dir: string): Promise<void> {
    this.checkNotBaseView("save");
    return this.enqueue(() => this.native.save(dir));
  }

  /** Writes the AdamW moments and step count to dir/optimizer.safetensors (atomically), for an exact resume. */
  async saveOptimizerState(dir: string): Promise<void> {
    this.checkNotBaseView("saveOptimizerState");
    return this.enqueue(() => this.native.saveOptimizerState(dir));
  }

  /** Restores what saveOptimizerState wrote; the model must have the same parameter count. */
  async loadOptimizerState(dir: string): Promise<void> {
    this.checkNotBaseView("loadOptimizerState");
    return this.enqueue(() => this.native.loadOptimizerState(dir));
  }

  /**
   * Adds LoRA adapters (on the CPU or on CUDA): from now on training updates only them, the weights stay frozen, and
   * save() writes the merged model plus the adapters in PEFT's format (dir/adapter/). Resolves with what was made.
   */
  async enableLora(options: LoraOptions): Promise<LoraInfo> {
    this.checkNotBaseView("enableLora");
    const info = await this.enqueue(() => this.native.enableLora({ ...options, seed: options.seed ?? 0 }));
    this.loraInfo = info;
    return info;
  }

  /**
   * Loads adapter weights saved by save() (dir/adapter), saveLoraAdapter() or PEFT. A model without adapters gets
   * them first, with the directory's rank, alpha and targets (readLoraConfig); one that has them must have been
   * given the same settings.
   */
  async loadLoraAdapter(dir: string): Promise<void> {
    this.checkNotBaseView("loadLoraAdapter");
    if (this.loraInfo === null) await this.enableLora({ ...(await readLoraConfig(dir)), seed: 0 });
    return this.enqueue(() => this.native.loadLoraAdapter(dir));
  }

  /** Writes only the adapters, in PEFT's format (dir/adapter_config.json, dir/adapter_model.safetensors). */
  async saveLoraAdapter(dir: string): Promise<void> {
    this.checkNotBaseView("saveLoraAdapter");
    return this.enqueue(() => this.native.saveLoraAdapter(dir));
  }

  /**
   * A 64-bit hash of the weights (16 hex digits; a LoRA model's frozen weights, without the adapters): equal for
   * the same bits. A resumed run checks its frozen reference with it.
   */
  async fingerprint(): Promise<string> {
    this.checkAlive("model");
    return this.enqueue(() => this.native.fingerprint());
  }

  /** The adapters enableLora made, or null. */
  get lora(): LoraInfo | null {
    return this.loraInfo;
  }

  /**
   * The base of a LoRA model as a model of its own, for log-probs and sampling: the same weights with the adapters
   * off, sharing this model's memory and call queue (a reference model that costs nothing). It cannot train or be
   * saved, and disposing it leaves this model alive.
   */
  base(): EngineModel {
    this.checkAlive("model");
    if (this.isBaseView) throw new Error("base(): this is a base view already");
    if (this.loraInfo === null) throw new Error("base(): the model has no LoRA adapters; use clone() for a copy");
    const view = new EngineModel(this.native, this.queue, true);
    view.loraInfo = null;
    return view;
  }

  /** A frozen copy of the weights (no optimizer state): a reference model. */
  async clone(): Promise<EngineModel> {
    this.checkNotBaseView("clone");
    return new EngineModel(await this.enqueue(() => this.native.clone()));
  }

  async logprobs(batch: Batch): Promise<LogprobResult> {
    this.checkAlive("model");
    return this.enqueue(() => this.native.logprobs(batch, this.isBaseView));
  }

  /** Full logits [nTokens, vocab]; for tests and debugging. */
  async logits(batch: Batch): Promise<Float32Array> {
    this.checkNotBaseView("logits");
    return this.enqueue(() => this.native.logits(batch));
  }

  /** Reward-model score of each sequence. */
  async scores(batch: Batch): Promise<Float32Array> {
    this.checkNotBaseView("scores");
    return this.enqueue(() => this.native.scores(batch));
  }

  /**
   * Rejects, with the sizes, when the gradients and AdamW moments the first trainStep allocates (3x the weights)
   * do not fit in the memory available now; resolves at once when they exist already or the model is on a GPU.
   */
  async checkTrainingMemory(): Promise<void> {
    this.checkAlive("model");
    return this.enqueue(() => this.native.checkTrainingMemory());
  }

  async trainStep(options: TrainStepOptions): Promise<TrainStats> {
    this.checkNotBaseView("trainStep");
    const request = toNativeTrainRequest(options);
    const ref = options.refModel;
    if (ref === undefined) return this.enqueue(() => this.native.trainStep(request));
    if (!(ref instanceof EngineModel)) throw new TypeError("trainStep: refModel must be an EngineModel");
    if (ref.native === this.native || ref.isBaseView) {
      throw new Error(
        "trainStep: refModel must be a different model than the one trained (use clone()); for a LoRA model's base, " +
          "pass its log-probs as refChosen/refRejected",
      );
    }
    ref.checkAlive("refModel");
    const slot = ref.reserve();
    return this.enqueue(async () => {
      try {
        await slot.turn;
        return await this.native.trainStep({ ...request, refModel: ref.native });
      } finally {
        slot.done();
      }
    });
  }

  async sample(options: SampleOptions): Promise<SampleResult> {
    this.checkAlive("model");
    const request = toNativeSampleRequest(options);
    return this.enqueue(() => this.native.sample(request, this.isBaseView));
  }

  /**
   * A copy of the flat fp32 parameter buffer (transformers tensor order, see native/core/params.h). For a LoRA
   * model: its frozen weights, without the adapters (save() writes them merged).
   */
  async getParams(): Promise<Float32Array> {
    this.checkAlive("model");
    return this.enqueue(async () => this.native.getParams());
  }

  async setParams(params: Float32Array): Promise<void> {
    this.checkAlive("model");
    // A copy of its own (a memcpy, unlike Float32Array.from), taken now: the caller may change `params` meanwhile,
    // and the engine thread reads the copy in place.
    if (this.isBaseView) throw new Error("setParams: a LoRA base view is read-only; set the parameters on its model");
    const copy = params instanceof Float32Array ? params.slice() : Float32Array.from(params);
    return this.enqueue(async () => this.native.setParams(copy));
  }

  /** Frees the weights once the calls queued before it have run; later calls reject. A base view frees nothing. */
  async dispose(): Promise<void> {
    if (this.disposeRequested) return;
    this.disposeRequested = true;
    if (this.isBaseView) return;
    return this.enqueue(async () => this.native.dispose());
  }

  private checkAlive(what: string): void {
    if (this.disposeRequested) throw new Error(`${what} has been disposed; create or load a new one`);
  }

  /** Alive, and not a base view: those only compute log-probs and samples. */
  private checkNotBaseView(op: string): void {
    this.checkAlive("model");
    if (this.isBaseView) throw new Error(`${op}: a LoRA model's base view only computes log-probs and samples`);
  }

  private enqueue<T>(op: () => Promise<T>): Promise<T> {
    const result = this.queue.tail.then(op);
    this.queue.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Takes the next turn in this model's queue without running anything in it (see trainStep). */
  private reserve(): Reservation {
    let done!: () => void;
    const finished = new Promise<void>((resolve) => {
      done = resolve;
    });
    const turn = this.queue.tail;
    this.queue.tail = finished;
    return { turn, done };
  }
}

/** The optimizer settings over the defaults; a key the engine does not know (a typo) is an error, not ignored. */
function optimizerOf(given: TrainStepOptions["optimizer"]): AdamWOptions {
  if (given === undefined) return { ...DEFAULT_OPTIMIZER };
  if (typeof given !== "object" || given === null || Array.isArray(given)) {
    throw new TypeError(`optimizer must be an object like { lr: 1e-5 }, got ${Array.isArray(given) ? "an array" : JSON.stringify(given)}`);
  }
  const unknown = Object.keys(given).filter((k) => !(k in DEFAULT_OPTIMIZER));
  if (unknown.length > 0) {
    throw new TypeError(`optimizer has unknown field(s) ${unknown.join(", ")}; known: ${Object.keys(DEFAULT_OPTIMIZER).join(", ")}`);
  }
  return { ...DEFAULT_OPTIMIZER, ...given };
}

function toNativeTrainRequest(o: TrainStepOptions): Omit<NativeTrainRequest, "refModel"> {
  const request: Omit<NativeTrainRequest, "refModel"> = {
    loss: o.loss,
    batch: o.batch,
    beta: o.beta ?? DEFAULT_BETA,
    optimizer: optimizerOf(o.optimizer),
    applyUpdate: o.applyUpdate ?? true,
  };
  if (o.chosen !== undefined) request.chosen = toInt32Array(o.chosen, "chosen");
  if (o.rejected !== undefined) request.rejected = toInt32Array(o.rejected, "rejected");
  if (o.weights !== undefined) request.weights = toFloat32Array(o.weights, "weights");
  if (o.refChosen !== undefined) request.refChosen = toFloat32Array(o.refChosen, "refChosen");
  if (o.refRejected !== undefined) request.refRejected = toFloat32Array(o.refRejected, "refRejected");
  if (o.labelSmoothing !== undefined) request.labelSmoothing = o.labelSmoothing;
  if (o.simpoGamma !== undefined) request.simpoGamma = o.simpoGamma;
  return request;
}

function isPacked(p: SampleOptions["prompts"]): p is PackedPrompts {
  return !Array.isArray(p) && typeof p === "object" && p !== null && "tokens" in p && "offsets" in p;
}

/** Only the fields the addon reads, so a caller's wider object (a config section) passes through cleanly. */
function deviceOptions(o: DeviceOptions): DeviceOptions {
  const out: DeviceOptions = {};
  if (o.device !== undefined) out.device = o.device;
  if (o.precision !== undefined) out.precision = o.precision;
  return out;
}

function toNativeSampleRequest(o: SampleOptions): NativeSampleRequest {
  const packed = isPacked(o.prompts) ? o.prompts : packPrompts(o.prompts as readonly ArrayLike<number>[]);
  const request: NativeSampleRequest = {
    promptTokens: packed.tokens,
    promptOffsets: packed.offsets,
    nSamples: o.nSamples ?? DEFAULT_SAMPLING.nSamples,
    maxNewTokens: o.maxNewTokens ?? DEFAULT_SAMPLING.maxNewTokens,
    temperature: o.temperature ?? DEFAULT_SAMPLING.temperature,
    topK: o.topK ?? DEFAULT_SAMPLING.topK,
    topP: o.topP ?? DEFAULT_SAMPLING.topP,
    seed: o.seed ?? 0,
  };
  if (o.stopTokens !== undefined) request.stopTokens = toInt32Array(o.stopTokens, "stopTokens");
  if (o.vocabLimit !== undefined) request.vocabLimit = o.vocabLimit;
  if (o.streamIds !== undefined) {
    const ids = new BigUint64Array(o.streamIds.length);
    for (let i = 0; i < o.streamIds.length; i++) {
      const v = o.streamIds[i] as number | bigint;
      const ok = typeof v === "number" ? Number.isSafeInteger(v) && v >= 0 : v >= 0n && v < 1n << 64n;
      if (!ok) throw new RangeError(`streamIds[${i}] must be a non-negative safe integer or a u64 bigint, got ${v}`);
      ids[i] = BigInt(v);
    }
    request.streamIds = ids;
  }
  return request;
}
