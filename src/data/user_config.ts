// The config sections of a run on the user's own model: zod schemas meant to be spread into the run config
// (model.tokenizer / model.chatTemplate, a `prompts` section, reward.sources / reward.evalSources /
// reward.missingEosPenalty), and the mapping from a parsed config to createUserTask's options.

import { resolve } from "node:path";

import { z } from "zod";

import type { DeviceName, PrecisionName } from "../engine/index.js";
import { DEFAULT_MESSAGES_FIELD, DEFAULT_PROMPT_FIELD } from "./prompt_file.js";
import type { RewardConfig, RewardSpec } from "./reward_spec.js";
import type { UserTaskOptions } from "./user_task.js";

const path = () => z.string({ error: "must be a non-empty path" }).min(1, { error: "must be a non-empty path" });
const name = () => z.string({ error: "must be a non-empty string" }).min(1, { error: "must be a non-empty string" });
const count = (min: number) =>
  z.int({ error: `must be an integer >= ${min}` }).gte(min, { error: `must be an integer >= ${min}` });
const weight = () => z.number({ error: "must be a finite number" }).default(1);
/** Extra chat template variables: a JSON object, e.g. {"enable_thinking": false}. */
export const ChatTemplateArgsSchema = z.record(z.string(), z.json(), {
  error: 'must be an object of template variables, e.g. {"enable_thinking": false}',
});
const templateArgs = () => ChatTemplateArgsSchema.optional();
const section = <S extends z.core.$ZodLooseShape>(shape: S) => z.strictObject(shape, { error: "must be an object" });

/** Added to the `model` section. */
export const userModelFields = {
  /** Tokenizer directory, when not the policy directory. */
  tokenizer: path().optional(),
  /** A Jinja chat template replacing the tokenizer's. */
  chatTemplate: z.string({ error: "must be a Jinja template string" }).optional(),
  /** Extra chat template variables, e.g. {"enable_thinking": false} for Qwen3. */
  chatTemplateArgs: templateArgs(),
};

export const PromptsSchema = section({
  /** JSONL file, one {"prompt": text} or {"messages": [...]} per line. */
  file: path(),
  promptField: name().default(DEFAULT_PROMPT_FIELD),
  messagesField: name().default(DEFAULT_MESSAGES_FIELD),
  /** Held out for evaluation (of the unique prompts). */
  evalFraction: z
    .number({ error: "must be a number in [0, 1)" })
    .gte(0, { error: "must be a number in [0, 1)" })
    .lt(1, { error: "must be a number in [0, 1)" })
    .default(0.1),
  /** Exact count held out; overrides evalFraction. */
  evalCount: count(1).optional(),
  /** Seed of the split (not the run's seed, so runs with different seeds share it). */
  seed: count(0).default(0),
  /** Wrap plain-text prompts as a user turn of the chat template. */
  textAsChat: z.boolean({ error: "must be true or false" }).default(false),
});

const RewardSourceSchema = z.discriminatedUnion(
  "type",
  [
    section({
      type: z.literal("model"),
      /** Hugging Face *ForSequenceClassification directory. */
      path: path(),
      tokenizer: path().optional(),
      chatTemplate: z.string().optional(),
      chatTemplateArgs: templateArgs(),
      weight: weight(),
    }),
    section({ type: z.literal("module"), path: path(), weight: weight() }),
    section({
      type: z.literal("http"),
      url: name(),
      weight: weight(),
      batchSize: count(1).optional(),
      concurrency: count(1).optional(),
      timeoutMs: count(1).optional(),
      retries: count(0).optional(),
      backoffMs: count(0).optional(),
      maxBackoffMs: count(0).optional(),
      headers: z.record(z.string(), z.string(), { error: "must be an object of header strings" }).optional(),
      sendIds: z.boolean({ error: "must be true or false" }).optional(),
    }),
  ],
  { error: "must be a reward source with type 'model', 'module' or 'http'" },
);

/** Added to the `reward` section. */
export const userRewardFields = {
  /** What the loop optimizes: the weighted sum of these. */
  sources: z.array(RewardSourceSchema, { error: "must be a list of reward sources" }).min(1, { error: "must list at least one reward source" }).optional(),
  /** What evaluation scores with; `sources` when absent. */
  evalSources: z.array(RewardSourceSchema, { error: "must be a list of reward sources" }).min(1, { error: "must list at least one reward source" }).optional(),
  /** Subtracted from responses that hit sampling.maxNewTokens before end-of-sequence. */
  missingEosPenalty: z.number({ error: "must be a number >= 0" }).gte(0, { error: "must be a number >= 0" }).default(0),
};

type RewardSourceConfig = z.output<typeof RewardSourceSchema>;

/** The parts of a parsed run config a user task is made from. */
export interface UserRunConfig {
  model: {
    policy?: string | undefined;
    reference?: string | undefined;
    tokenizer?: string | undefined;
    chatTemplate?: string | undefined;
    chatTemplateArgs?: Record<string, z.core.util.JSONType> | undefined;
  };
  prompts?: z.output<typeof PromptsSchema> | undefined;
  reward: { sources?: RewardSourceConfig[] | undefined; evalSources?: RewardSourceConfig[] | undefined; missingEosPenalty: number };
  loop: { prompts: number };
  eval: { prompts: number };
  sampling: { maxNewTokens: number };
  device?: DeviceName;
  precision?: PrecisionName;
}

function rewardConfig(sources: readonly RewardSourceConfig[], penalty: number): RewardConfig {
  // Optional fields left out by zod stay absent, so HttpRewardSource's defaults apply.
  const specs = sources.map((s) => Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined)) as RewardSpec);
  return { sources: specs, missingEosPenalty: penalty };
}

function resolveSource(source: RewardSourceConfig, baseDir: string): RewardSourceConfig {
  if (source.type === "http") return source;
  const resolved = { ...source, path: resolve(baseDir, source.path) };
  if (resolved.type === "model" && resolved.tokenizer !== undefined) resolved.tokenizer = resolve(baseDir, resolved.tokenizer);
  return resolved;
}

/**
 * A copy of `config` with its model, prompt and reward paths made absolute against `baseDir`. The run saves its
 * config, and a resumed run reads it back without the config file whose folder relative paths were meant for.
 */
export function withAbsoluteUserPaths<C extends UserRunConfig>(config: C, baseDir: string): C {
  const abs = (p: string | undefined) => (p === undefined ? undefined : resolve(baseDir, p));
  const model = { ...config.model };
  for (const key of ["policy", "reference", "tokenizer"] as const) {
    const value = abs(model[key]);
    if (value !== undefined) model[key] = value;
  }
  const reward = { ...config.reward };
  if (reward.sources !== undefined) reward.sources = reward.sources.map((s) => resolveSource(s, baseDir));
  if (reward.evalSources !== undefined) reward.evalSources = reward.evalSources.map((s) => resolveSource(s, baseDir));
  const prompts = config.prompts === undefined ? undefined : { ...config.prompts, file: resolve(baseDir, config.prompts.file) };
  return { ...config, model, reward, ...(prompts === undefined ? {} : { prompts }) };
}

/** createUserTask's options for a config; relative paths are resolved against `baseDir` (the config's folder). */
export function userTaskOptions(config: UserRunConfig, baseDir: string): UserTaskOptions {
  const missing: string[] = [];
  if (config.model.policy === undefined) missing.push("model.policy (a Hugging Face model directory)");
  if (config.prompts === undefined) missing.push("prompts.file (a JSONL prompt file)");
  if (config.reward.sources === undefined) missing.push("reward.sources (at least one reward source)");
  if (missing.length > 0) throw new Error(`a run on your own model needs ${missing.join(", ")}`);
  const prompts = config.prompts as z.output<typeof PromptsSchema>;
  const options: UserTaskOptions = {
    policy: config.model.policy as string,
    prompts: {
      file: prompts.file,
      promptField: prompts.promptField,
      messagesField: prompts.messagesField,
      evalFraction: prompts.evalFraction,
      seed: prompts.seed,
      textAsChat: prompts.textAsChat,
      ...(prompts.evalCount === undefined ? {} : { evalCount: prompts.evalCount }),
    },
    trainLimit: config.loop.prompts,
    evalLimit: config.eval.prompts,
    maxNewTokens: config.sampling.maxNewTokens,
    reward: rewardConfig(config.reward.sources as RewardSourceConfig[], config.reward.missingEosPenalty),
    baseDir,
  };
  if (config.model.reference !== undefined) options.reference = config.model.reference;
  if (config.device !== undefined) {
    options.placement = { device: config.device };
    if (config.precision !== undefined) options.placement.precision = config.precision;
  }
  if (config.model.tokenizer !== undefined) options.tokenizer = config.model.tokenizer;
  if (config.model.chatTemplate !== undefined) options.chatTemplate = config.model.chatTemplate;
  if (config.model.chatTemplateArgs !== undefined) options.chatTemplateArgs = config.model.chatTemplateArgs;
  if (config.reward.evalSources !== undefined) {
    options.evalReward = rewardConfig(config.reward.evalSources, config.reward.missingEosPenalty);
  }
  return options;
}
