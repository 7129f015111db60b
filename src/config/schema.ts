// The run configuration: one zod schema, and the only place defaults live.
//
// Defaults are sized for the built-in task on a 2-core CPU; tune them here
// and nowhere else. Objects are strict, so a misspelled key is reported
// instead of silently falling back to a default.

import { z } from "zod";

import { PromptsSchema, userModelFields, userRewardFields } from "../data/user_config.js";

interface Bound {
  value: number;
  /** True when the bound itself is excluded. */
  open: boolean;
}

/** "in (0, 1]", ">= 0", "< 1", ... for error messages. */
function describeRange(lo: Bound | undefined, hi: Bound | undefined): string {
  if (lo !== undefined && hi !== undefined) {
    return `in ${lo.open ? "(" : "["}${lo.value}, ${hi.value}${hi.open ? ")" : "]"}`;
  }
  if (lo !== undefined) return `${lo.open ? ">" : ">="} ${lo.value}`;
  if (hi !== undefined) return `${hi.open ? "<" : "<="} ${hi.value}`;
  return "finite";
}

function withBounds(base: z.ZodNumber, message: string, lo?: Bound, hi?: Bound): z.ZodNumber {
  let schema = base;
  if (lo !== undefined) schema = lo.open ? schema.gt(lo.value, { error: message }) : schema.gte(lo.value, { error: message });
  if (hi !== undefined) schema = hi.open ? schema.lt(hi.value, { error: message }) : schema.lte(hi.value, { error: message });
  return schema;
}

/** A finite number within the given bounds. */
function real(lo?: Bound, hi?: Bound): z.ZodNumber {
  const message = `must be a number ${describeRange(lo, hi)}`;
  return withBounds(z.number({ error: message }), message, lo, hi);
}

/** An integer within the given bounds. */
function integer(lo?: Bound, hi?: Bound): z.ZodNumber {
  const message = `must be an integer ${describeRange(lo, hi)}`;
  return withBounds(z.int({ error: message }), message, lo, hi);
}

const closed = (value: number): Bound => ({ value, open: false });
const open = (value: number): Bound => ({ value, open: true });

function choice<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `must be one of ${values.map((v) => `'${v}'`).join(", ")}` });
}

const flag = () => z.boolean({ error: "must be true or false" });
const path = () => z.string({ error: "must be a non-empty path" }).min(1, { error: "must be a non-empty path" });
const section = <S extends z.core.$ZodLooseShape>(shape: S) => z.strictObject(shape, { error: "must be an object" });

/**
 * LoRA (PEFT's): train low-rank adapters beside the targeted linear layers and keep the policy's weights frozen.
 * The frozen weights double as the reference model, and gradients and AdamW state cover the adapters only (a
 * 0.6B model's run peaked at 6.2 GB against 15.4 with full fine-tuning). On the CPU and on CUDA.
 */
const LoraSchema = section({
  rank: integer(closed(1), closed(4096)).default(8),
  /** The adapters' output is scaled by alpha / rank. */
  alpha: real(open(0), closed(1e6)).default(16),
  /**
   * Module names as PEFT's target_modules: a layer is targeted when its name is an entry or ends with "." + entry
   * ("q_proj", "self_attn.v_proj", GPT-2's "c_attn"); "all-linear": every linear layer of the blocks.
   */
  targets: z
    .array(z.string({ error: "must be a module name" }).min(1, { error: "must be a module name" }), {
      error: 'must be a list of module names, e.g. ["q_proj", "v_proj"] or ["all-linear"]',
    })
    .min(1, { error: 'must name at least one module, or ["all-linear"]' })
    .default(["all-linear"]),
});

const ModelSchema = section({
  /** Checkpoint of the policy to start from; the built-in task trains one by SFT when absent. */
  policy: path().optional(),
  /** Frozen reference model; defaults to a copy of the starting policy. */
  reference: path().optional(),
  /** Train LoRA adapters instead of every weight (absent: full fine-tuning). */
  lora: LoraSchema.optional(),
  /** task 'user' only: model.tokenizer, model.chatTemplate, model.chatTemplateArgs (src/data/user_config.ts). */
  ...userModelFields,
});

const LoopSchema = section({
  /** Online iterations (generate, score, train). */
  iterations: integer(closed(1), closed(10_000)).default(6),
  /** Training prompts in the pool. */
  prompts: integer(closed(1), closed(1_000_000)).default(1024),
  /** Fraction of prompts regenerated per iteration after the first. */
  rho: real(open(0), closed(1)).default(0.5),
  strategy: choice(["optune", "uniform", "all"]).default("optune"),
  statistic: choice(["chosen", "mean", "gap", "zscore"]).default("chosen"),
  /** Responses sampled per regenerated prompt. */
  k: integer(closed(2), closed(64)).default(8),
  /** Let the previous pair compete with the new responses. */
  merge: flag().default(false),
  /** Pairs with a smaller reward gap are kept but not trained on. */
  tieThreshold: real(closed(0)).default(0.001),
  /** DPO epochs over the trainable pairs per iteration. */
  epochs: integer(closed(1), closed(100)).default(1),
  /** Pairs per optimizer step. */
  batchPairs: integer(closed(1), closed(4096)).default(16),
  /** Replace the reference model by the current policy after each iteration. */
  refreshReference: flag().default(false),
});

const LossSchema = section({
  /**
   * dpo, ipo, wdpo (dpo weighted by the pairs' reward gaps), hinge (SLiC: max(0, 1 - beta h)) or simpo (no
   * reference: -log sigmoid(beta (mean token logp_c - mean token logp_r) - simpoGamma)).
   */
  type: choice(["dpo", "ipo", "wdpo", "hinge", "simpo"]).default("wdpo"),
  /** KL strength (DPO beta, IPO tau). */
  beta: real(open(0), closed(100)).default(1),
  /** Sharpness of the wDPO weight function; only used by type 'wdpo'. */
  beta2: real(closed(0), closed(1000)).default(1),
  weightFn: choice(["linear", "exp", "sigmoid"]).default("linear"),
  /**
   * dpo, wdpo and simpo: the share of pairs whose preference is assumed flipped (conservative DPO, TRL's
   * label_smoothing): each pair's loss is (1 - e) -log sigmoid(beta h) + e -log sigmoid(-beta h). 0 is plain DPO.
   */
  labelSmoothing: real(closed(0), open(0.5)).default(0),
  /** simpo: the target reward margin gamma (TRL's simpo_gamma default). */
  simpoGamma: real(closed(0), closed(100)).default(0.5),
});

const betaValue = () => real(closed(0), open(1));

const OptimSchema = section({
  lr: real(open(0), closed(1)).default(1.5e-4),
  weightDecay: real(closed(0), closed(1)).default(0),
  /** Global gradient-norm clip; 0 disables clipping. */
  maxGradNorm: real(closed(0)).default(1),
  /**
   * Linear learning-rate warmup over the run's first optimizer steps: step t uses lr * t / warmupSteps until
   * t = warmupSteps; 0 disables. Steps count across iterations and resumes (the engine's AdamW step).
   */
  warmupSteps: integer(closed(0), closed(1_000_000)).default(0),
  /** Adam beta1, beta2. */
  betas: z
    .tuple([betaValue(), betaValue()], { error: "must be a pair [beta1, beta2]" })
    .default([0.9, 0.999]),
  /**
   * A step whose gradient is NaN or Inf is refused by the engine (weights unchanged). false or absent: the run
   * stops there, keeping the last completed iteration; true: that minibatch is skipped, counted in
   * train.skippedSteps, and training goes on. Optional rather than defaulted so configs saved before it existed
   * resolve unchanged.
   */
  skipNonFinite: flag().default(false),
});

const SamplingSchema = section({
  temperature: real(open(0), closed(10)).default(1),
  /** Keep the k most likely tokens; 0 disables top-k. */
  topK: integer(closed(0), closed(1024)).default(0),
  /** Nucleus mass; 1 disables top-p. */
  topP: real(open(0), closed(1)).default(1),
  /** Built-in answers are <= 12 characters plus <eos>. */
  maxNewTokens: integer(closed(1), closed(1024)).default(16),
});

const EvalSchema = section({
  /** Held-out prompts scored by the gold reward (the built-in families in random order). */
  prompts: integer(closed(1), closed(1_000_000)).default(500),
  /** Sampled responses per eval prompt. */
  samples: integer(closed(1), closed(64)).default(4),
});

const RunSchema = section({
  /** Where checkpoints, logs and metrics go. */
  dir: path().default("runs/latest"),
  /** Save a checkpoint every N iterations; 0 saves only the final one. */
  checkpointEvery: integer(closed(0), closed(10_000)).default(1),
  /** Where prepared models are cached, keyed by a hash of the prepare settings. */
  cacheDir: path().default(".optune/cache"),
});

const RewardSchema = section({
  /** task 'builtin' only: 'model', the learned reward model (the proxy); 'gold', the task's own reward (no proxy gap). */
  source: choice(["model", "gold"]).default("model"),
  /** task 'user' only: reward.sources, reward.evalSources, reward.missingEosPenalty (src/data/user_config.ts). */
  ...userRewardFields,
});

// How the built-in task's starting policy and reward model are made. Every field is part of the cache key.
const PrepareSchema = section({
  /** Seed of the prompt split, demonstrations, preference data and model inits (not of the run). */
  seed: integer(closed(0), closed(0xffffffff)).default(0),
  /** Prompts for SFT demonstrations, reward-model data and the loop's pool. */
  trainPrompts: integer(closed(1), closed(1_000_000)).default(3000),
  /** Held-out prompts; evaluation uses the first eval.prompts of them. */
  heldOutPrompts: integer(closed(1), closed(100_000)).default(1000),
  arch: choice(["gpt2", "llama"]).default("gpt2"),
  dModel: integer(closed(8), closed(4096)).default(64),
  nLayer: integer(closed(1), closed(64)).default(2),
  nHead: integer(closed(1), closed(64)).default(4),
  dFf: integer(closed(8), closed(16384)).default(256),
  sftEpochs: integer(closed(0), closed(100)).default(30),
  sftLr: real(open(0), closed(1)).default(3e-3),
  sftBatch: integer(closed(1), closed(4096)).default(32),
  /** 'policy': the reward model starts from the SFT policy's transformer (as in InstructGPT); 'random': from scratch. */
  rewardInit: choice(["policy", "random"]).default("policy"),
  /** Synthetic comparison pairs per train prompt (gold answer, corruptions, junk). */
  rewardPairsPerPrompt: integer(closed(0), closed(64)).default(4),
  /** SFT-policy samples per train prompt, paired off and labelled by gold (even; 0 disables). */
  rewardPolicySamples: integer(closed(0), closed(64)).default(8),
  /** Fraction of preference labels flipped (annotator noise). */
  rewardFlipProb: real(closed(0), closed(1)).default(0.1),
  rewardEpochs: integer(closed(0), closed(100)).default(8),
  rewardLr: real(open(0), closed(1)).default(2e-3),
  rewardBatch: integer(closed(1), closed(4096)).default(32),
});

// Sections use prefault({}) so an absent section still gets its field defaults.
export const ConfigSchema = section({
  seed: integer(closed(0), closed(0xffffffff)).default(1),
  /**
   * Where the policy, reference and reward models run: 'cuda' needs an engine built with the CUDA backend and a
   * GPU (an error otherwise, never a silent fallback); 'auto' takes the GPU when there is one.
   */
  device: choice(["cpu", "cuda", "auto"]).default("cpu"),
  /**
   * 'bf16': the matmuls take bf16 copies of weights and activations, accumulating in fp32 (fp32 master weights).
   * On CUDA all of them; on the CPU those of sampling and training (faster on CPUs with AVX512-BF16: AMD Zen 4,
   * Intel Sapphire Rapids and later; slower elsewhere), while log-probs and reward scores stay fp32.
   */
  precision: choice(["fp32", "bf16"]).default("fp32"),
  /** 'builtin': the synthetic task (prepare section); 'user': your own model, prompts and rewards. */
  task: choice(["builtin", "user"]).default("builtin"),
  model: ModelSchema.prefault({}),
  loop: LoopSchema.prefault({}),
  loss: LossSchema.prefault({}),
  optim: OptimSchema.prefault({}),
  sampling: SamplingSchema.prefault({}),
  eval: EvalSchema.prefault({}),
  run: RunSchema.prefault({}),
  reward: RewardSchema.prefault({}),
  prepare: PrepareSchema.prefault({}),
  /** task 'user' only: the JSONL prompt file and its split. */
  prompts: PromptsSchema.optional(),
});

/** The fully resolved configuration. */
export type Config = z.output<typeof ConfigSchema>;
/** What a user may write: every field optional. */
export type ConfigInput = z.input<typeof ConfigSchema>;

export class ConfigError extends Error {
  constructor(readonly issues: readonly string[]) {
    super(`invalid config:\n${issues.map((line) => `  ${line}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

function formatPath(segments: readonly PropertyKey[]): string {
  let out = "";
  for (const segment of segments) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? String(segment) : `.${String(segment)}`;
  }
  return out === "" ? "(config)" : out;
}

function formatValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "number" || typeof value === "boolean" || value === null) return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

/** One line per problem: `path: reason, got value`. */
function formatIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  const lines: string[] = [];
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) lines.push(`${formatPath([...issue.path, key])}: unknown field`);
      continue;
    }
    const got = "input" in issue ? `, got ${formatValue(issue.input)}` : "";
    lines.push(`${formatPath(issue.path)}: ${issue.message}${got}`);
  }
  // Two checks on one field (e.g. integer and range) can repeat a line.
  return [...new Set(lines)];
}

/** A user run needs its model, prompts and rewards; the user-only fields are refused on the built-in task. */
function taskFieldIssues(config: Config): string[] {
  const issues: string[] = [];
  if (config.task === "user") {
    if (config.model.policy === undefined) issues.push("model.policy: required when task is 'user' (a Hugging Face model directory)");
    if (config.prompts === undefined) issues.push("prompts.file: required when task is 'user' (a JSONL prompt file)");
    if (config.reward.sources === undefined) issues.push("reward.sources: required when task is 'user' (at least one reward source)");
    if (config.reward.source === "gold") issues.push("reward.source: 'gold' is the built-in task's own reward; task 'user' scores with reward.sources");
  } else {
    // Without this they would be ignored without a word, which the strict sections exist to prevent.
    const userOnly: Array<[string, unknown]> = [
      ["model.tokenizer", config.model.tokenizer],
      ["model.chatTemplate", config.model.chatTemplate],
      ["model.chatTemplateArgs", config.model.chatTemplateArgs],
      ["prompts", config.prompts],
      ["reward.sources", config.reward.sources],
      ["reward.evalSources", config.reward.evalSources],
    ];
    for (const [field, value] of userOnly) {
      if (value !== undefined) issues.push(`${field}: only used when task is 'user', got task '${config.task}'`);
    }
    if (config.reward.missingEosPenalty !== 0) {
      issues.push(`reward.missingEosPenalty: only used when task is 'user', got task '${config.task}'`);
    }
  }
  return issues;
}

/** Constraints between fields, checked once every field is valid on its own. */
function crossFieldIssues(config: Config): string[] {
  const issues: string[] = [];
  const { prepare } = config;
  issues.push(...taskFieldIssues(config));
  if (config.task === "builtin" && config.loop.prompts > prepare.trainPrompts) {
    issues.push(`loop.prompts: must be <= prepare.trainPrompts (${prepare.trainPrompts}), got ${config.loop.prompts}`);
  }
  if (config.task === "builtin" && config.eval.prompts > prepare.heldOutPrompts) {
    issues.push(`eval.prompts: must be <= prepare.heldOutPrompts (${prepare.heldOutPrompts}), got ${config.eval.prompts}`);
  }
  if (config.loss.labelSmoothing > 0 && !["dpo", "wdpo", "simpo"].includes(config.loss.type)) {
    issues.push(`loss.labelSmoothing: only used by loss.type dpo, wdpo and simpo, got type '${config.loss.type}'`);
  }
  if (config.model.lora !== undefined && config.model.reference !== undefined) {
    issues.push("model.reference: with model.lora the reference is the policy's frozen base; remove model.reference");
  }
  if (prepare.dModel % prepare.nHead !== 0) {
    issues.push(`prepare.nHead: must divide prepare.dModel (${prepare.dModel}), got ${prepare.nHead}`);
  }
  return issues;
}

/** Resolves a partial config against the defaults; throws ConfigError listing every bad field. */
export function loadConfig(partial: unknown): Config {
  const result = ConfigSchema.safeParse(partial ?? {}, { reportInput: true });
  if (!result.success) throw new ConfigError(formatIssues(result.error.issues));
  const crossIssues = crossFieldIssues(result.data);
  if (crossIssues.length > 0) throw new ConfigError(crossIssues);
  return result.data;
}
