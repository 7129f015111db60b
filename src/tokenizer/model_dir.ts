// A Hugging Face model directory as a pair: the native model (weights, config.json) and the tokenizer that
// belongs to it, checked to agree on the vocabulary before anything is generated or scored with them.

import { resolve } from "node:path";

import { EngineModel } from "../engine/index.js";
import { HfTokenizer, type HfTokenizerOptions, templateOptions } from "./hf_tokenizer.js";

export interface ModelDirOptions extends HfTokenizerOptions {
  /** Where the tokenizer files are, when not next to the weights. */
  tokenizerDir?: string;
}

export interface LoadedModelDir {
  dir: string;
  model: EngineModel;
  tokenizer: HfTokenizer;
}

/** Loads a causal language model and its tokenizer from `dir`; the tokenizer is read first, since it fails fast and cheaply. */
export async function loadModelDir(dir: string, options: ModelDirOptions = {}): Promise<LoadedModelDir> {
  const root = resolve(dir);
  const tokenizer = await HfTokenizer.load(options.tokenizerDir ?? root, templateOptions(options));
  const model = await EngineModel.load(root);
  try {
    if (model.config.rewardModel) {
      throw new Error(`${root} is a reward model (a sequence classifier), not a causal language model`);
    }
    tokenizer.checkFitsModel(model.config.vocabSize, root);
  } catch (err) {
    await model.dispose();
    throw err;
  }
  return { dir: root, model, tokenizer };
}

/**
 * Throws unless `reference` can serve as the reference model of `policy`: DPO compares log-probs of the same token
 * ids under both, so they must share the vocabulary.
 */
export function checkReference(policy: EngineModel, policyDir: string, reference: EngineModel, referenceDir: string): void {
  if (reference.config.rewardModel) {
    throw new Error(`reference model ${referenceDir} is a reward model (a sequence classifier); use a causal language model`);
  }
  if (reference.config.vocabSize !== policy.config.vocabSize) {
    throw new Error(
      `reference model ${referenceDir} has vocab_size ${reference.config.vocabSize} but the policy ${policyDir} has ` +
        `${policy.config.vocabSize}; both must use the same tokenizer`,
    );
  }
}
