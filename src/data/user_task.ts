// A task made of the user's own pieces: a Hugging Face policy directory (and optionally a reference), its
// tokenizer and chat template, a JSONL prompt file split into train and held-out prompts, and reward sources.
// It implements the loop's Task interface, so `optune run` treats it like the built-in task.

import { existsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

import { type DeviceOptions, readModelConfig } from "../engine/index.js";
import type { ChatRewardPrompt } from "../rewards/module.js";
import type { RewardBatch, RewardSource } from "../rewards/source.js";
import type { Task, TaskPrompt } from "../tasks/task.js";
import { HfTokenizer, templateOptions } from "../tokenizer/index.js";
import type { ChatMessage, ChatTemplateArgs } from "../tokenizer/index.js";
import { encodePrompt } from "./encode_prompt.js";
import { type PromptFileOptions, readPromptFile, type SplitOptions } from "./prompt_file.js";
import { createRewardSource, type RewardConfig } from "./reward_spec.js";

export interface UserTaskOptions {
  /** Hugging Face directory of the starting policy. */
  policy: string;
  /** Frozen reference model; the starting policy when absent. */
  reference?: string;
  /** Tokenizer directory, when not the policy directory. */
  tokenizer?: string;
  /** Replaces the tokenizer's chat template. */
  chatTemplate?: string;
  /** Extra variables for the policy's chat template ({"enable_thinking": false}, ...). */
  chatTemplateArgs?: ChatTemplateArgs;
  prompts: { file: string; textAsChat?: boolean } & PromptFileOptions & SplitOptions;
  /** At most this many train / eval prompts are used (the first ones, in file order). */
  trainLimit?: number;
  evalLimit?: number;
  /** Generation length; every prompt must leave room for it within the policy's positions. */
  maxNewTokens: number;
  reward: RewardConfig;
  /** What evaluation scores with; the training reward when absent. */
  evalReward?: RewardConfig;
  /** Relative paths in the reward config are resolved against this directory. */
  baseDir?: string;
  /** Where reward models run (the run's device); the CPU when absent. */
  placement?: DeviceOptions;
}

/** A prompt as the loop sees it, plus the chat messages reward sources may re-render with their own template. */
export interface UserTaskPrompt extends TaskPrompt {
  messages?: readonly ChatMessage[];
}

export interface UserTask extends Task {
  readonly tokenizer: HfTokenizer;
  readonly trainPrompts: readonly UserTaskPrompt[];
  readonly evalPrompts: readonly UserTaskPrompt[];
}

/**
 * Gives chat prompts their messages back: the loop hands reward sources prompts as text and ids only, but a
 * reward model must re-render the conversation with its own template, not read the policy's rendering.
 */
class WithMessages implements RewardSource {
  readonly name: string;

  constructor(
    private readonly inner: RewardSource,
    private readonly byText: ReadonlyMap<string, readonly ChatMessage[]>,
  ) {
    this.name = inner.name;
  }

  score(batch: RewardBatch): Promise<number[]> {
    const prompts = batch.prompts.map((p: ChatRewardPrompt) => {
      const messages = p.messages ?? this.byText.get(p.text);
      return messages === undefined ? p : { ...p, messages };
    });
    return this.inner.score({ prompts, responses: batch.responses });
  }

  async dispose(): Promise<void> {
    await this.inner.dispose?.();
  }
}

/** vocab_size and the position count of a model directory, as the engine reads its config.json (no weights). */
async function modelShape(dir: string): Promise<{ vocabSize: number; maxPositions: number }> {
  const config = await readModelConfig(dir);
  return { vocabSize: config.vocabSize, maxPositions: config.maxPositions };
}

export async function createUserTask(options: UserTaskOptions): Promise<UserTask> {
  const baseDir = options.baseDir ?? process.cwd();
  const policyDir = resolve(baseDir, options.policy);
  // Otherwise the first complaint would be a missing tokenizer.json, which hides the real mistake.
  if (!existsSync(policyDir)) throw new Error(`the policy directory ${policyDir} does not exist`);
  const tokenizer = await HfTokenizer.load(
    options.tokenizer === undefined ? policyDir : resolve(baseDir, options.tokenizer),
    templateOptions(options),
  );
  const shape = await modelShape(policyDir);
  tokenizer.checkFitsModel(shape.vocabSize, policyDir);
  let referenceDir: string | undefined;
  if (options.reference !== undefined) {
    referenceDir = resolve(baseDir, options.reference);
    const ref = await modelShape(referenceDir);
    if (ref.vocabSize !== shape.vocabSize) {
      throw new Error(
        `reference model ${referenceDir} has vocab_size ${ref.vocabSize} but the policy ${policyDir} has ` +
          `${shape.vocabSize}; both must use the same tokenizer`,
      );
    }
  }
  if (tokenizer.stopTokens.ids.length === 0) {
    throw new Error(
      `${tokenizer.dir} defines no end-of-sequence token (generation_config.json eos_token_id, tokenizer_config.json ` +
        `eos_token or config.json eos_token_id); generation could never stop early`,
    );
  }

  const split = readPromptFile(resolve(baseDir, options.prompts.file), options.prompts);
  const encodeOptions = {
    maxPositions: shape.maxPositions,
    minNewTokens: options.maxNewTokens,
    ...(options.prompts.textAsChat === undefined ? {} : { textAsChat: options.prompts.textAsChat }),
  };
  // The line number is the prompt's id: unique in the file, and stable when the split or the limits change.
  const toTaskPrompt = (record: (typeof split.train)[number]): UserTaskPrompt => ({
    id: Number(record.origin.slice(record.origin.lastIndexOf(":") + 1)),
    ...encodePrompt(record, tokenizer, encodeOptions),
  });
  const train = split.train.slice(0, options.trainLimit).map(toTaskPrompt);
  const evaluation = split.eval.slice(0, options.evalLimit).map(toTaskPrompt);
  if (evaluation.length === 0) {
    throw new Error(`${options.prompts.file}: no prompts are held out for evaluation; set evalFraction or evalCount`);
  }

  const stop = new Set(tokenizer.stopTokens.ids);
  const messagesByText = new Map<string, readonly ChatMessage[]>();
  for (const p of [...train, ...evaluation]) if (p.messages !== undefined) messagesByText.set(p.text, p.messages);
  const source = async (config: RewardConfig): Promise<RewardSource> => {
    const created = await createRewardSource(config, baseDir, options.placement ?? {});
    if (messagesByText.size > 0) {
      try {
        created.checkChatPrompts?.(); // a source that cannot score the chat prompts fails now, not at iteration 1
      } catch (err) {
        await created.dispose?.();
        throw err;
      }
    }
    return new WithMessages(created, messagesByText);
  };
  // Without an evalReward, training and evaluation score with one source: one copy of a reward model in memory,
  // freed when the last of them is disposed.
  let entry: { source: Promise<RewardSource>; users: number } | undefined;
  const shared = async (): Promise<RewardSource> => {
    if (entry === undefined) entry = { source: source(options.reward), users: 0 };
    const mine = entry;
    mine.users++;
    let inner: RewardSource;
    try {
      inner = await mine.source;
    } catch (err) {
      if (--mine.users === 0 && entry === mine) entry = undefined;
      throw err;
    }
    let released = false;
    return {
      name: inner.name,
      score: (batch) => inner.score(batch),
      checkChatPrompts: () => inner.checkChatPrompts?.(),
      dispose: async () => {
        if (released) return;
        released = true;
        if (--mine.users > 0) return;
        if (entry === mine) entry = undefined;
        await inner.dispose?.();
      },
    };
  };
  const task: UserTask = {
    name: `user (${policyDir})`,
    tokenizer,
    trainPrompts: train,
    evalPrompts: evaluation,
    stopTokens: tokenizer.stopTokens.ids,
    ...(tokenizer.vocabSize < shape.vocabSize ? { vocabLimit: tokenizer.vocabSize } : {}),
    policyDir,
    decode: (ids) => {
      const endedWithEos = ids.length > 0 && stop.has(ids[ids.length - 1] as number);
      const body = endedWithEos ? ids.subarray(0, ids.length - 1) : ids;
      return { text: tokenizer.decode(body), endedWithEos };
    },
    createRewardSource: () => (options.evalReward === undefined ? shared() : source(options.reward)),
    createEvalSource: () => (options.evalReward === undefined ? shared() : source(options.evalReward)),
    writeCheckpointExtras: (dir) => {
      tokenizer.copyFilesTo(dir);
      // chat_template.jinja wins over tokenizer_config.json's template, so the checkpoint keeps the override.
      if (options.chatTemplate !== undefined) writeFileSync(join(dir, "chat_template.jinja"), options.chatTemplate);
    },
  };
  return referenceDir === undefined ? task : { ...task, referenceDir };
}
