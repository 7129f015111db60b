// Making the built-in task's starting point from a seed: an SFT policy fitted to imperfect demonstrations, and a
// reward model trained with the Bradley-Terry loss on noisily labelled comparison pairs.
//
// Both are cached as Hugging Face checkpoint directories under <cacheDir>/builtin-<hash>/{policy,reward}, where
// the hash covers every prepare setting and PREPARE_VERSION, so a changed setting (or recipe) prepares anew and
// an unchanged one is reused. The directory is built under a temporary name and renamed into place when
// complete, so an interrupted preparation never leaves a half-written cache behind.

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

import type { Config } from "../../config/schema.js";
import { EngineModel, packBatch, type ModelConfigInput, type SequenceInput } from "../../engine/index.js";
import { writeJsonAtomic } from "../../util/atomic.js";
import { Rng } from "../../util/random.js";
import { silentReporter, type Reporter } from "../../util/reporter.js";
import { makeDemos } from "./demos.js";
import { labelCandidatePairs, makePreferencePairs, type Candidate, type PreferencePair } from "./preference_data.js";
import { buildSplit, type Prompt, type PromptSplit } from "./prompts.js";
import { BOS_ID, decodeResponse, encode, encodePrompt, EOS_ID, PAD_ID, VOCAB_SIZE } from "./tokenizer.js";

export type PrepareSettings = Config["prepare"];

/** Bump when the preparation recipe changes, so old caches are not mistaken for new ones. */
export const PREPARE_VERSION = 2;

// <bos> + prompt (<= 24) + '=' + answer (<= 12) + <eos> is at most 39 tokens; sampling may run to 16 new tokens.
export const MAX_POSITIONS = 64;
// The final learning rate of SFT and reward training, as a fraction of the initial one (linear decay).
const FINAL_LR_FRACTION = 0.1;
const MAX_GRAD_NORM = 1;

// Sub-streams of the prepare seed, one per use, so changing one setting does not reshuffle unrelated data.
const STREAM_DEMOS = 1;
const STREAM_PREFERENCES = 2;
const STREAM_HELD_OUT_PREFERENCES = 3;
const STREAM_SFT_ORDER = 4;
const STREAM_REWARD_ORDER = 5;
const STREAM_INIT = 6;
const STREAM_POLICY_SAMPLES = 7;
const STREAM_SAMPLE_LABELS = 8;
// Sampling settings for the reward model's policy samples: the SFT policy's own distribution.
const SAMPLE_MAX_NEW_TOKENS = 16;

export interface PreparedPaths {
  dir: string;
  policy: string;
  reward: string;
  report: string;
}

export interface PrepareReport {
  version: number;
  settings: PrepareSettings;
  /** Mean SFT loss (per response token) over the last epoch. */
  sftFinalLoss: number;
  /** Reward-model accuracy on its (noisy) training labels over the last epoch. */
  rewardTrainAccuracy: number;
  /** Reward-model accuracy against the gold ranking on held-out prompts (noise-free labels). */
  rewardHeldOutAccuracy: number;
  seconds: number;
}

export interface PreparedTask {
  paths: PreparedPaths;
  report: PrepareReport;
  /** True when an existing cache entry was used. */
  reused: boolean;
}

/** The prompt split every built-in run with these settings uses. */
export function builtinSplit(settings: PrepareSettings): PromptSplit {
  return buildSplit({ seed: settings.seed, trainSize: settings.trainPrompts, evalSize: settings.heldOutPrompts });
}

/** Short hash of the settings (in a fixed key order) and the recipe version. */
export function prepareCacheKey(settings: PrepareSettings): string {
  const ordered = Object.fromEntries(Object.entries(settings).sort(([a], [b]) => a.localeCompare(b)));
  const text = JSON.stringify({ version: PREPARE_VERSION, settings: ordered });
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

export function preparedPaths(cacheDir: string, settings: PrepareSettings): PreparedPaths {
  const dir = join(cacheDir, `builtin-${prepareCacheKey(settings)}`);
  return { dir, policy: join(dir, "policy"), reward: join(dir, "reward"), report: join(dir, "prepare.json") };
}

export function policyModelConfig(settings: PrepareSettings, rewardModel: boolean): ModelConfigInput {
  return {
    arch: settings.arch,
    vocabSize: VOCAB_SIZE,
    dModel: settings.dModel,
    nLayer: settings.nLayer,
    nHead: settings.nHead,
    dFf: settings.dFf,
    maxPositions: MAX_POSITIONS,
    tieEmbeddings: true,
    rewardModel,
    bosTokenId: BOS_ID,
    eosTokenId: EOS_ID,
    padTokenId: PAD_ID,
  };
}

function linearDecay(lr: number, step: number, totalSteps: number): number {
  const progress = totalSteps <= 1 ? 0 : step / (totalSteps - 1);
  return lr * (1 - (1 - FINAL_LR_FRACTION) * progress);
}

function minibatches<T>(items: readonly T[], batchSize: number, rng: Rng): T[][] {
  const order = rng.shuffle(items.slice());
  const out: T[][] = [];
  for (let start = 0; start < order.length; start += batchSize) out.push(order.slice(start, start + batchSize));
  return out;
}

async function trainSft(
  policy: EngineModel,
  split: PromptSplit,
  settings: PrepareSettings,
  root: Rng,
  reporter: Reporter,
): Promise<number> {
  const demos = makeDemos(split.train, { seed: root.fork(STREAM_DEMOS).seed });
  const sequences: SequenceInput[] = demos.map((demo, i) => ({
    prompt: encodePrompt((split.train[i] as Prompt).text),
    response: encode(demo.response, { eos: true }),
  }));
  const order = root.fork(STREAM_SFT_ORDER);
  const stepsPerEpoch = Math.ceil(sequences.length / settings.sftBatch);
  const totalSteps = stepsPerEpoch * settings.sftEpochs;
  let step = 0;
  let lastEpochLoss = Number.NaN;
  for (let epoch = 0; epoch < settings.sftEpochs; epoch++) {
    let lossSum = 0;
    let tokens = 0;
    for (const batch of minibatches(sequences, settings.sftBatch, order)) {
      const stats = await policy.trainStep({
        loss: "sft",
        batch: packBatch(batch),
        optimizer: { lr: linearDecay(settings.sftLr, step, totalSteps), maxGradNorm: MAX_GRAD_NORM },
      });
      lossSum += stats.loss * stats.nTokens;
      tokens += stats.nTokens;
      step += 1;
      reporter.status(`prepare: SFT epoch ${epoch + 1}/${settings.sftEpochs}, step ${step}/${totalSteps}`);
    }
    lastEpochLoss = lossSum / tokens;
    reporter.line(`prepare: SFT epoch ${epoch + 1}/${settings.sftEpochs}: loss ${lastEpochLoss.toFixed(4)}`);
  }
  return lastEpochLoss;
}

function candidateSequence(prompt: Prompt, candidate: Candidate): SequenceInput {
  const response = candidate.ids ?? encode(candidate.text, { eos: candidate.endedWithEos });
  return { prompt: encodePrompt(prompt.text), response };
}

/** Chosen/rejected sequences interleaved: pair j is sequences 2j (chosen) and 2j + 1 (rejected). */
function pairBatch(pairs: readonly PreferencePair[], prompts: readonly Prompt[]) {
  const sequences: SequenceInput[] = [];
  for (const pair of pairs) {
    const prompt = prompts[pair.promptId] as Prompt;
    sequences.push(candidateSequence(prompt, pair.chosen), candidateSequence(prompt, pair.rejected));
  }
  const chosen = pairs.map((_, j) => 2 * j);
  const rejected = pairs.map((_, j) => 2 * j + 1);
  return { batch: packBatch(sequences), chosen, rejected };
}

/** A reward model whose transformer starts as a copy of the policy's (its score head keeps its own init). */
async function rewardModelFromPolicy(policy: EngineModel, settings: PrepareSettings, seed: number): Promise<EngineModel> {
  const reward = await EngineModel.create(policyModelConfig(settings, true), seed);
  // With tied embeddings the policy's parameters are exactly the reward model's minus the trailing score head
  // [1, dModel] (transformers tensor order, native/core/params.h).
  const trunk = reward.numParams - settings.dModel;
  if (policy.numParams !== trunk) {
    throw new Error(`cannot copy the policy into the reward model: ${policy.numParams} vs ${trunk} trunk parameters`);
  }
  const params = await reward.getParams();
  params.set(await policy.getParams(), 0);
  await reward.setParams(params);
  return reward;
}

async function rewardAccuracy(reward: EngineModel, pairs: readonly PreferencePair[], prompts: readonly Prompt[]): Promise<number> {
  if (pairs.length === 0) return Number.NaN;
  const { batch } = pairBatch(pairs, prompts);
  const scores = await reward.scores(batch);
  let correct = 0;
  pairs.forEach((pair, j) => {
    const goldPrefersChosen = pair.goldChosen > pair.goldRejected;
    const modelPrefersChosen = (scores[2 * j] as number) > (scores[2 * j + 1] as number);
    if (goldPrefersChosen === modelPrefersChosen) correct += 1;
  });
  return correct / pairs.length;
}

/** rewardPolicySamples responses of the policy per train prompt, as candidates for comparison. */
async function policyCandidates(policy: EngineModel, prompts: readonly Prompt[], samples: number, seed: number): Promise<Candidate[][]> {
  if (samples === 0) return prompts.map(() => []);
  const result = await policy.sample({
    prompts: prompts.map((p) => encodePrompt(p.text)),
    nSamples: samples,
    maxNewTokens: SAMPLE_MAX_NEW_TOKENS,
    temperature: 1,
    stopTokens: [EOS_ID],
    seed,
    streamIds: prompts.map((p) => p.id),
  });
  return prompts.map((_, i) => {
    const list: Candidate[] = [];
    for (let k = 0; k < samples; k++) {
      const r = i * samples + k;
      const ids = result.tokens.slice(result.offsets[r] as number, result.offsets[r + 1] as number);
      list.push({ ...decodeResponse(ids), ids });
    }
    return list;
  });
}

/** The reward model's training pairs: synthetic candidates plus labelled pairs of SFT-policy samples. */
async function rewardTrainingPairs(policy: EngineModel, split: PromptSplit, settings: PrepareSettings, root: Rng): Promise<PreferencePair[]> {
  const synthetic = makePreferencePairs(split.train, {
    seed: root.fork(STREAM_PREFERENCES).seed,
    pairsPerPrompt: settings.rewardPairsPerPrompt,
    flipProb: settings.rewardFlipProb,
  });
  const samples = await policyCandidates(policy, split.train, settings.rewardPolicySamples, root.fork(STREAM_POLICY_SAMPLES).seed);
  const sampled = labelCandidatePairs(split.train, samples, {
    seed: root.fork(STREAM_SAMPLE_LABELS).seed,
    flipProb: settings.rewardFlipProb,
  });
  return [...synthetic, ...sampled];
}

async function trainRewardModel(
  reward: EngineModel,
  pairs: readonly PreferencePair[],
  split: PromptSplit,
  settings: PrepareSettings,
  root: Rng,
  reporter: Reporter,
): Promise<number> {
  const order = root.fork(STREAM_REWARD_ORDER);
  const stepsPerEpoch = Math.ceil(pairs.length / settings.rewardBatch);
  const totalSteps = stepsPerEpoch * settings.rewardEpochs;
  let step = 0;
  let lastEpochAccuracy = Number.NaN;
  for (let epoch = 0; epoch < settings.rewardEpochs; epoch++) {
    let correct = 0;
    for (const group of minibatches(pairs, settings.rewardBatch, order)) {
      const { batch, chosen, rejected } = pairBatch(group, split.train);
      const stats = await reward.trainStep({
        loss: "bt",
        batch,
        chosen,
        rejected,
        optimizer: { lr: linearDecay(settings.rewardLr, step, totalSteps), maxGradNorm: MAX_GRAD_NORM },
      });
      correct += stats.accuracy * stats.nPairs;
      step += 1;
      reporter.status(`prepare: reward model epoch ${epoch + 1}/${settings.rewardEpochs}, step ${step}/${totalSteps}`);
    }
    lastEpochAccuracy = correct / pairs.length;
    reporter.line(
      `prepare: reward model epoch ${epoch + 1}/${settings.rewardEpochs}: accuracy on noisy labels ${lastEpochAccuracy.toFixed(3)}`,
    );
  }
  return lastEpochAccuracy;
}

/** Trains the policy and the reward model and saves them (and a report) into `dir`. */
export async function prepareModels(settings: PrepareSettings, dir: string, reporter: Reporter = silentReporter): Promise<PrepareReport> {
  const started = performance.now();
  const split = builtinSplit(settings);
  const root = new Rng(settings.seed);
  const initSeed = root.fork(STREAM_INIT).seed;

  const policy = await EngineModel.create(policyModelConfig(settings, false), initSeed);
  let reward: EngineModel | undefined;
  try {
    reporter.line(`prepare: policy ${settings.arch} d=${settings.dModel} L=${settings.nLayer} (${policy.numParams} parameters)`);
    const sftFinalLoss = await trainSft(policy, split, settings, root, reporter);
    reward =
      settings.rewardInit === "policy"
        ? await rewardModelFromPolicy(policy, settings, initSeed + 1)
        : await EngineModel.create(policyModelConfig(settings, true), initSeed + 1);
    const pairs = await rewardTrainingPairs(policy, split, settings, root);
    reporter.line(`prepare: ${pairs.length} labelled comparison pairs for the reward model`);
    const rewardTrainAccuracy = await trainRewardModel(reward, pairs, split, settings, root, reporter);
    const heldOutPairs = makePreferencePairs(split.eval, { seed: root.fork(STREAM_HELD_OUT_PREFERENCES).seed, flipProb: 0 });
    const rewardHeldOutAccuracy = await rewardAccuracy(reward, heldOutPairs, split.eval);
    reporter.line(`prepare: reward model accuracy vs gold on held-out pairs ${rewardHeldOutAccuracy.toFixed(3)}`);

    mkdirSync(dir, { recursive: true });
    await policy.save(join(dir, "policy"));
    await reward.save(join(dir, "reward"));
    const report: PrepareReport = {
      version: PREPARE_VERSION,
      settings,
      sftFinalLoss,
      rewardTrainAccuracy,
      rewardHeldOutAccuracy,
      seconds: (performance.now() - started) / 1000,
    };
    writeJsonAtomic(join(dir, "prepare.json"), report);
    return report;
  } finally {
    await policy.dispose();
    await reward?.dispose();
  }
}

function readReport(path: string): PrepareReport {
  return JSON.parse(readFileSync(path, "utf8")) as PrepareReport;
}

/** The cached policy and reward model for these settings, preparing them first when the cache has none. */
export async function ensurePrepared(
  settings: PrepareSettings,
  cacheDir: string,
  reporter: Reporter = silentReporter,
): Promise<PreparedTask> {
  const paths = preparedPaths(cacheDir, settings);
  // prepare.json is written last, so its presence means the entry is complete.
  if (existsSync(paths.report)) return { paths, report: readReport(paths.report), reused: true };

  reporter.line(`prepare: no cached models for these settings; training them into ${paths.dir}`);
  const temp = `${paths.dir}.tmp-${process.pid}`;
  rmSync(temp, { recursive: true, force: true });
  try {
    const report = await prepareModels(settings, temp, reporter);
    try {
      renameSync(temp, paths.dir);
    } catch (err) {
      // Another process finished the same preparation first: theirs is as good as ours.
      if (!existsSync(paths.report)) throw err;
    }
    return { paths, report, reused: false };
  } finally {
    rmSync(temp, { recursive: true, force: true });
  }
}
