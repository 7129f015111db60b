// The built-in offline task: character-level prompts of six families, a policy SFT-trained on imperfect
// demonstrations, a reward model learned from noisy comparisons (the proxy the loop optimizes), and the hidden
// gold reward (what evaluation reports). Models come from the prepare cache, made on first use.

import type { Config } from "../../config/schema.js";
import { RewardModelSource } from "../../rewards/reward_model.js";
import type { RewardPrompt, RewardResponse } from "../../rewards/source.js";
import { TaskRewardSource } from "../../rewards/task_reward.js";
import { silentReporter, type Reporter } from "../../util/reporter.js";
import type { Task, TaskPrompt } from "../task.js";
import { goldReward } from "./gold.js";
import { writeBuiltinTokenizerFiles } from "./hf_tokenizer_files.js";
import { builtinSplit, ensurePrepared, MAX_POSITIONS, type PreparedTask } from "./prepare.js";
import type { Prompt } from "./prompts.js";
import { decodeResponse, encodePrompt, EOS_ID, VOCAB_SIZE } from "./tokenizer.js";

export interface BuiltinTask extends Task {
  readonly prepared: PreparedTask;
}

function toTaskPrompt(prompt: Prompt): TaskPrompt {
  return { id: prompt.id, text: prompt.text, ids: encodePrompt(prompt.text) };
}

/** The gold reward as a reward source; prompts are recognized by their text. */
function goldSource(prompts: readonly Prompt[]): TaskRewardSource {
  const byText = new Map(prompts.map((p) => [p.text, p] as const));
  return new TaskRewardSource("gold reward", (prompt: RewardPrompt, response: RewardResponse) => {
    const known = byText.get(prompt.text);
    if (known === undefined) throw new Error(`gold reward: unknown prompt ${JSON.stringify(prompt.text)}`);
    return goldReward(known, response.text, response.endedWithEos);
  });
}

/** The built-in task for a run config: the first loop.prompts train prompts and eval.prompts held-out ones. */
export async function createBuiltinTask(config: Config, reporter: Reporter = silentReporter): Promise<BuiltinTask> {
  const prepared = await ensurePrepared(config.prepare, config.run.cacheDir, reporter);
  const split = builtinSplit(config.prepare);
  const train = split.train.slice(0, config.loop.prompts);
  const evaluation = split.eval.slice(0, config.eval.prompts);
  const task: BuiltinTask = {
    name: "builtin",
    prepared,
    trainPrompts: train.map(toTaskPrompt),
    evalPrompts: evaluation.map(toTaskPrompt),
    stopTokens: [EOS_ID],
    policyDir: config.model.policy ?? prepared.paths.policy,
    vocabSize: VOCAB_SIZE,
    decode: (ids) => decodeResponse(ids),
    // checkpoints carry the character tokenizer as Hugging Face files: complete model directories
    writeCheckpointExtras: (dir) => writeBuiltinTokenizerFiles(dir, MAX_POSITIONS),
    createRewardSource: async () =>
      // The proxy also scores eval responses (to compare proxy and gold on the same responses).
      config.reward.source === "gold"
        ? goldSource([...train, ...evaluation])
        : RewardModelSource.load(prepared.paths.reward, {
            placement: { device: config.device, precision: config.precision },
          }),
    createEvalSource: async () => goldSource(evaluation),
  };
  if (config.model.reference !== undefined) return { ...task, referenceDir: config.model.reference };
  return task;
}
