// Reward sources from a plain description (what a config file holds): a reward model directory, a JS module, an
// HTTP endpoint, or a weighted sum of several, with an optional missing-EOS penalty.

import { resolve } from "node:path";

import type { DeviceOptions } from "../engine/index.js";
import { HfRewardModelSource } from "../rewards/hf_reward_model.js";
import { type HttpRewardOptions, HttpRewardSource } from "../rewards/http.js";
import { ModuleRewardSource } from "../rewards/module.js";
import type { RewardSource } from "../rewards/source.js";
import { type ChatTemplateArgs, templateOptions } from "../tokenizer/index.js";
import { WeightedRewardSource } from "../rewards/weighted.js";

export type RewardSpec =
  | {
      type: "model";
      path: string;
      tokenizer?: string;
      chatTemplate?: string;
      chatTemplateArgs?: ChatTemplateArgs;
      weight?: number;
    }
  | { type: "module"; path: string; weight?: number }
  | ({ type: "http"; weight?: number } & HttpRewardOptions);

export interface RewardConfig {
  /** Summed with their weights (default 1 each). */
  sources: readonly RewardSpec[];
  /** Subtracted from responses that hit the length limit before end-of-sequence. */
  missingEosPenalty?: number;
}

/** Relative paths are resolved against `baseDir` (e.g. the config file's directory). */
async function createOne(spec: RewardSpec, baseDir: string, placement: DeviceOptions): Promise<RewardSource> {
  switch (spec.type) {
    case "model": {
      const options = {
        ...(spec.tokenizer === undefined ? {} : { tokenizerDir: resolve(baseDir, spec.tokenizer) }),
        ...templateOptions(spec),
        placement,
      };
      return HfRewardModelSource.load(resolve(baseDir, spec.path), options);
    }
    case "module":
      return ModuleRewardSource.load(resolve(baseDir, spec.path));
    case "http": {
      const { type: _type, weight: _weight, ...options } = spec;
      return new HttpRewardSource(options);
    }
  }
}

/**
 * The reward source a config describes; one source of weight 1 and no penalty is returned as is. Reward models
 * are placed per `placement` (the run's device; the CPU by default).
 */
export async function createRewardSource(
  config: RewardConfig,
  baseDir = process.cwd(),
  placement: DeviceOptions = {},
): Promise<RewardSource> {
  if (config.sources.length === 0) throw new Error("reward: give at least one source (a model, a module or an http endpoint)");
  const created: RewardSource[] = [];
  try {
    for (const spec of config.sources) created.push(await createOne(spec, baseDir, placement));
  } catch (err) {
    // Free the reward models already loaded before reporting which source failed.
    await Promise.all(created.map((s) => s.dispose?.()));
    throw err;
  }
  const penalty = config.missingEosPenalty ?? 0;
  const only = config.sources[0] as RewardSpec;
  if (created.length === 1 && (only.weight ?? 1) === 1 && penalty === 0) return created[0] as RewardSource;
  return new WeightedRewardSource(
    created.map((source, i) => ({ source, weight: config.sources[i]?.weight ?? 1 })),
    { missingEosPenalty: penalty },
  );
}
