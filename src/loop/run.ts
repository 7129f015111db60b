// The OPTune online loop. Iteration 0 evaluates the starting policy. Then each iteration t:
//   1. select:   t = 1 regenerates every prompt (the pool is empty); later, the configured strategy picks
//                rho * N prompts (optune: lowest statistic first; uniform: at random; all: every prompt)
//   2. generate: K responses per selected prompt with the current policy
//   3. score:    proxy rewards; chosen = argmax, rejected = argmin (merged with the old pair if asked); reference
//                log-probs of the new chosen/rejected responses, computed once and cached in the pool
//   4. train:    E epochs of DPO / IPO / wDPO over all trainable pairs in the pool (unselected prompts keep theirs)
//   5. evaluate: gold reward (greedy and sampled), win rate against the starting policy, KL to the reference
//   6. record:   a metrics.jsonl line, a checkpoint when due, and the run state for --resume
// With refreshReference, the reference becomes a copy of the policy at the start of each iteration t >= 2, and
// every cached reference log-prob in the pool is recomputed under it right then (once per pooled response).

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import type { Config } from "../config/schema.js";
import { EngineModel } from "../engine/index.js";
import { scoreChecked, type RewardSource } from "../rewards/source.js";
import type { Task, TaskPrompt } from "../tasks/task.js";
import { writeJsonAtomic } from "../util/atomic.js";
import { silentReporter, type Reporter } from "../util/reporter.js";
import { checkpointDir, iterationCheckpointName, saveCheckpoint } from "./checkpoints.js";
import { evaluatePolicy, meanWithError, perPromptSampled, winRate, type EvalResult, type EvalSettings } from "./evaluate.js";
import { generateResponses, rewardBatchOf } from "./generate.js";
import { appendMetrics, truncateMetrics, type IterationMetrics } from "./metrics.js";
import { createPool, trainablePairs, type Pool } from "./pool.js";
import { recomputePoolReference } from "./reference.js";
import { engineSeed, iterationRng, Purpose } from "./seeds.js";
import { selectPrompts } from "./selection.js";
import { CONFIG_FILE, METRICS_FILE, clearRunDir, foreignRunDirError, runDirStatus } from "./run_dir.js";
import {
  checkResumeConfig,
  loadRunState,
  promptsFingerprint,
  removeLeftovers,
  saveRunState,
  type LoadedState,
  type RunState,
} from "./state.js";
import { NonFiniteStepError, trainOnPool, type TrainSettings, type TrainSummary } from "./train.js";
import { updatePairs } from "./update_pool.js";

export interface RunOptions {
  config: Config;
  task: Task;
  /** Continue from the run directory's last completed iteration. */
  resume?: boolean;
  reporter?: Reporter;
  /** Polled between steps; when it returns true the loop stops (see RunResult.status). */
  shouldStop?: () => boolean;
  /** Called after each iteration's record is written. */
  onIteration?: (metrics: IterationMetrics) => void;
}

export interface RunResult {
  /** 'interrupted': stopped by shouldStop; the saved state is the last completed iteration's. */
  status: "completed" | "interrupted";
  runDir: string;
  /** All records of the run, including those of earlier sessions when resumed. */
  metrics: IterationMetrics[];
  lastIteration: number;
  finalCheckpoint: string | null;
}

export { CONFIG_FILE, METRICS_FILE } from "./run_dir.js";

function trainSettings(config: Config): TrainSettings {
  return {
    loss: config.loss,
    optimizer: {
      lr: config.optim.lr,
      weightDecay: config.optim.weightDecay,
      maxGradNorm: config.optim.maxGradNorm,
      warmupSteps: config.optim.warmupSteps,
      beta1: config.optim.betas[0],
      beta2: config.optim.betas[1],
    },
    batchPairs: config.loop.batchPairs,
    epochs: config.loop.epochs,
    skipNonFinite: config.optim.skipNonFinite === true,
  };
}

function evalSettings(config: Config): EvalSettings {
  return { samplesPerPrompt: config.eval.samples, sampling: config.sampling, seed: engineSeed(config.seed, 0, Purpose.evaluate) };
}

function seconds(since: number): number {
  return (performance.now() - since) / 1000;
}

function mean(values: readonly number[]): number | null {
  return values.length === 0 ? null : values.reduce((a, b) => a + b, 0) / values.length;
}

function evalMetrics(result: EvalResult, initial: RunState["initialEval"]) {
  const greedy = meanWithError(result.greedy);
  const sampled = meanWithError(perPromptSampled(result));
  return {
    gold: { greedy: greedy.mean, greedySe: greedy.se, sampled: sampled.mean, sampledSe: sampled.se },
    winRate: { greedy: winRate(result.greedy, initial.greedy), sampled: winRate(result.sampled.flat(), initial.sampled.flat()) },
    proxyEval: result.proxySampled,
    kl: result.kl,
    responses: result.responses,
  };
}

/** The mutable parts of a running loop. */
interface LoopContext {
  config: Config;
  task: Task;
  runDir: string;
  reporter: Reporter;
  shouldStop: () => boolean;
  policy: EngineModel;
  reference: EngineModel;
  proxy: RewardSource;
  evaluator: RewardSource;
  promptsById: Map<number, TaskPrompt>;
  promptIds: Map<number, Int32Array>;
  state: RunState;
}

function selectedPrompts(ctx: LoopContext, iteration: number): TaskPrompt[] {
  const { loop } = ctx.config;
  const strategy = iteration === 1 ? "all" : loop.strategy;
  const ids = selectPrompts(
    ctx.state.pool,
    { strategy, rho: loop.rho, statistic: loop.statistic },
    iterationRng(ctx.config.seed, iteration, Purpose.select),
  );
  return ids.map((id) => ctx.promptsById.get(id)!);
}



interface IterationOutcome {
  metrics: IterationMetrics | null;
}

async function runIteration(ctx: LoopContext, iteration: number): Promise<IterationOutcome> {
  const { config, reporter } = ctx;
  const label = `iteration ${iteration}/${config.loop.iterations}`;
  const started = performance.now();
  let referenceSequences = 0;

  if (config.loop.refreshReference && iteration >= 2) {
    reporter.status(`${label}: refreshing the reference model`);
    await ctx.reference.dispose();
    ctx.reference = await ctx.policy.clone();
    referenceSequences += await recomputePoolReference(ctx.state.pool, ctx.reference, ctx.promptIds);
  }

  // Generation.
  const selected = selectedPrompts(ctx, iteration);
  reporter.status(`${label}: generating ${selected.length} x ${config.loop.k} responses`);
  const generationStart = performance.now();
  const generation = await generateResponses(ctx.policy, ctx.task, selected, {
    samplesPerPrompt: config.loop.k,
    sampling: config.sampling,
    seed: engineSeed(config.seed, iteration, Purpose.generate),
  });
  const generationSeconds = seconds(generationStart);
  if (ctx.shouldStop()) return { metrics: null };

  // Scoring and the new pairs.
  reporter.status(`${label}: scoring ${selected.length * config.loop.k} responses`);
  const scoringStart = performance.now();
  const flatRewards = await scoreChecked(ctx.proxy, rewardBatchOf(selected, generation.responses));
  const k = config.loop.k;
  const rewards = selected.map((_, i) => flatRewards.slice(i * k, (i + 1) * k));
  const update = await updatePairs(
    ctx.state.pool,
    ctx.reference,
    selected,
    generation.responses.map((list) => list.map((r) => r.ids)),
    rewards,
    { iteration, tieThreshold: config.loop.tieThreshold, merge: config.loop.merge },
  );
  referenceSequences += update.referenceSequences;
  const scoringSeconds = seconds(scoringStart);
  const newPairs = selected.map((p) => ctx.state.pool.entries.get(p.id)!.pair!);
  if (ctx.shouldStop()) return { metrics: null };

  // Training.
  const trainingStart = performance.now();
  let summary: TrainSummary;
  try {
    summary = await trainOnPool(
      ctx.policy,
      ctx.state.pool,
      ctx.promptIds,
      trainSettings(config),
      iterationRng(config.seed, iteration, Purpose.shuffle),
      {
        shouldStop: ctx.shouldStop,
        onStep: (done, total) => reporter.status(`${label}: training step ${done}/${total}`),
      },
    );
  } catch (err) {
    if (!(err instanceof NonFiniteStepError)) throw err;
    // Nothing of this iteration is saved, so the run directory still holds the previous one, ready to resume.
    throw new Error(
      `${label}, ${err.message}. The run stopped; iteration ${iteration - 1} is saved in ${ctx.runDir}. To skip such ` +
        `steps instead, set optim.skipNonFinite: true (for this run: in ${join(ctx.runDir, CONFIG_FILE)}, then resume it)`,
      { cause: err },
    );
  }
  const trainingSeconds = seconds(trainingStart);
  if (summary.stopped || ctx.shouldStop()) return { metrics: null };

  // Evaluation.
  reporter.status(`${label}: evaluating on ${ctx.task.evalPrompts.length} held-out prompts`);
  const evaluationStart = performance.now();
  const result = await evaluatePolicy(ctx.policy, ctx.reference, ctx.task, ctx.evaluator, ctx.proxy, evalSettings(config));
  const evaluationSeconds = seconds(evaluationStart);
  const evaluated = evalMetrics(result, ctx.state.initialEval);

  const metrics: IterationMetrics = {
    iteration,
    proxy: {
      chosen: mean(newPairs.map((p) => p.rewardChosen)),
      rejected: mean(newPairs.map((p) => p.rewardRejected)),
      mean: mean(flatRewards),
      evalSampled: evaluated.proxyEval,
    },
    gold: evaluated.gold,
    winRate: evaluated.winRate,
    kl: evaluated.kl,
    lengths: {
      ...evaluated.responses,
      chosen: mean(newPairs.map((p) => p.chosenIds.length)),
      rejected: mean(newPairs.map((p) => p.rejectedIds.length)),
    },
    train: {
      loss: summary.loss,
      accuracy: summary.accuracy,
      margin: summary.margin,
      chosenReward: summary.chosenReward,
      rejectedReward: summary.rejectedReward,
      steps: summary.steps,
      skippedSteps: summary.skippedSteps,
      pairs: summary.pairs,
    },
    weights: summary.weights,
    generation: {
      promptsRegenerated: selected.length,
      tokensGenerated: generation.tokensGenerated,
      referenceSequences,
      trainablePairs: trainablePairs(ctx.state.pool).length,
    },
    seconds: {
      generation: generationSeconds,
      scoring: scoringSeconds,
      training: trainingSeconds,
      evaluation: evaluationSeconds,
      total: seconds(started),
    },
  };
  return { metrics };
}

/** Iteration 0: the starting policy's evaluation, the baseline of every win rate. */
async function evaluateStart(ctx: LoopContext): Promise<IterationMetrics> {
  ctx.reporter.status(`evaluating the starting policy on ${ctx.task.evalPrompts.length} held-out prompts`);
  const started = performance.now();
  const result = await evaluatePolicy(ctx.policy, ctx.reference, ctx.task, ctx.evaluator, ctx.proxy, evalSettings(ctx.config));
  ctx.state.initialEval = { greedy: result.greedy, sampled: result.sampled };
  const evaluated = evalMetrics(result, ctx.state.initialEval);
  const elapsed = seconds(started);
  return {
    iteration: 0,
    proxy: { chosen: null, rejected: null, mean: null, evalSampled: evaluated.proxyEval },
    gold: evaluated.gold,
    winRate: evaluated.winRate,
    kl: evaluated.kl,
    lengths: { ...evaluated.responses, chosen: null, rejected: null },
    train: { loss: null, accuracy: null, margin: null, chosenReward: null, rejectedReward: null, steps: 0, skippedSteps: 0, pairs: 0 },
    weights: null,
    generation: { promptsRegenerated: 0, tokensGenerated: 0, referenceSequences: 0, trainablePairs: 0 },
    seconds: { generation: 0, scoring: 0, training: 0, evaluation: elapsed, total: elapsed },
  };
}

function describeIteration(m: IterationMetrics): string {
  const f = (v: number | null, digits = 3) => (v === null || !Number.isFinite(v) ? "-" : v.toFixed(digits));
  return (
    `iteration ${m.iteration}: gold greedy ${f(m.gold.greedy)} ± ${f(2 * m.gold.greedySe)}, ` +
    `sampled ${f(m.gold.sampled)} ± ${f(2 * m.gold.sampledSe)}, proxy (eval) ${f(m.proxy.evalSampled)}, ` +
    `win ${f(m.winRate.sampled, 2)}, KL ${f(m.kl, 2)}, loss ${f(m.train.loss)}, ` +
    `regenerated ${m.generation.promptsRegenerated}, ${f(m.seconds.total, 1)}s`
  );
}

async function saveIteration(ctx: LoopContext, metrics: IterationMetrics): Promise<void> {
  const { config, runDir } = ctx;
  appendMetrics(join(runDir, METRICS_FILE), metrics);
  const t = metrics.iteration;
  if (t > 0 && config.run.checkpointEvery > 0 && t % config.run.checkpointEvery === 0) {
    await saveCheckpoint(ctx.policy, checkpointDir(runDir, iterationCheckpointName(t)));
  }
  ctx.state.iteration = t;
  const referenceIsRefreshed = config.loop.refreshReference && t >= 2;
  await saveRunState(runDir, ctx.state, { policy: ctx.policy, reference: referenceIsRefreshed ? ctx.reference : null });
}

/** A policy or reference for `task`, refused when its vocabulary is not the one the task's token ids assume. */
async function loadTaskModel(task: Task, dir: string, placement: Parameters<typeof EngineModel.load>[1]): Promise<EngineModel> {
  const model = await EngineModel.load(dir, placement);
  const vocab = model.config.vocabSize;
  if (task.vocabSize !== undefined && vocab !== task.vocabSize) {
    await model.dispose();
    throw new Error(
      `${dir}: a vocabulary of ${vocab} tokens, but the ${task.name} task's tokenizer has ${task.vocabSize}: give ` +
        `model.policy / model.reference a model of this task (e.g. a checkpoint of an earlier optune run on it)`,
    );
  }
  return model;
}

/** The policy, reference and reward sources of a run; if one fails to load, those already loaded are disposed. */
async function openRunInputs(task: Task, loaded: LoadedState | null, config: Config) {
  const placement = { device: config.device, precision: config.precision };
  const opened: Array<{ dispose?: () => unknown }> = [];
  const open = async <T extends { dispose?: () => unknown }>(load: () => Promise<T>): Promise<T> => {
    try {
      const item = await load();
      opened.push(item);
      return item;
    } catch (err) {
      await Promise.all(opened.map((item) => item.dispose?.()));
      throw err;
    }
  };
  const lora = config.model.lora;
  let policy: EngineModel;
  let reference: EngineModel;
  if (lora === undefined) {
    policy = await open(() => loadTaskModel(task, loaded?.policyDir ?? task.policyDir, placement));
    const referenceDir = loaded?.referenceDir ?? task.referenceDir ?? task.policyDir;
    reference = await open(() => loadTaskModel(task, referenceDir, placement));
  } else {
    if (task.referenceDir !== undefined) {
      throw new Error(
        `model.reference (${task.referenceDir}): with model.lora the reference is the policy's frozen base; remove model.reference`,
      );
    }
    // The starting policy's weights stay frozen under the adapters (a resumed run reloads them and its saved
    // adapters), and they are the reference unless a refreshed one was saved.
    policy = await open(async () => {
      const model = await loadTaskModel(task, task.policyDir, placement);
      try {
        await model.enableLora({ rank: lora.rank, alpha: lora.alpha, targets: lora.targets, seed: config.seed });
        if (loaded) await model.loadLoraAdapter(join(loaded.policyDir, "adapter"));
      } catch (err) {
        await model.dispose();
        throw err;
      }
      return model;
    });
    // A refreshed reference is a merged copy of the policy, made where the policy runs: reloaded there too, so a
    // resumed run computes its log-probs as the uninterrupted run did.
    reference = loaded?.referenceDir
      ? await open(() => loadTaskModel(task, loaded.referenceDir as string, placement))
      : policy.base();
  }
  const proxy = await open(() => task.createRewardSource());
  const evaluator = await open(() => task.createEvalSource());
  return { policy, reference, proxy, evaluator };
}

function createRunDir(runDir: string): void {
  try {
    mkdirSync(runDir, { recursive: true });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`cannot create run directory ${runDir} (${reason}): choose another run directory (--out)`, {
      cause: err,
    });
  }
}

/** Runs (or resumes) the loop in config.run.dir. */
export async function runLoop(options: RunOptions): Promise<RunResult> {
  const { config, task } = options;
  const reporter = options.reporter ?? silentReporter;
  const shouldStop = options.shouldStop ?? (() => false);
  const runDir = config.run.dir;
  const resume = options.resume === true;
  const dirStatus = runDirStatus(runDir);
  if (dirStatus.kind === "foreign") throw foreignRunDirError(runDir, dirStatus.entries);
  if (!resume && dirStatus.kind === "run") {
    throw new Error(`${runDir} already holds a run: resume it, or choose another run directory`);
  }
  if (resume) checkResumeConfig(runDir, config, CONFIG_FILE);
  // A run killed while saving leaves temp files; the saved state itself is complete (state.ts).
  removeLeftovers(runDir);
  const loaded = resume ? loadRunState(runDir) : null;
  if (resume && loaded === null) reporter.line(`${runDir} has no completed iteration: starting it from iteration 0`);

  // Models and reward sources load before the run directory is written, so that a bad model, device or reward
  // leaves nothing behind to block the retry.
  const { policy, reference, proxy, evaluator } = await openRunInputs(task, loaded, config);
  const prompts = promptsFingerprint(task);
  try {
    if (policy.lora !== null) {
      const { rank, alpha, modules, trainableParams } = policy.lora;
      const share = ((100 * trainableParams) / policy.numParams).toFixed(2);
      reporter.line(
        `LoRA: rank ${rank}, alpha ${alpha} on ${modules.length} layers: ${trainableParams} trainable parameters ` +
          `(${share}% of ${policy.numParams}); the frozen weights are the reference`,
      );
    }
    // The reference is reloaded from its files on resume (unless a refreshed one was saved): they must still hold
    // the weights the run started with, or the cached reference log-probs and the new ones would disagree.
    const savedWeights = loaded?.state.referenceWeights;
    if (loaded !== null && loaded.referenceDir === null && savedWeights !== undefined) {
      const now = await reference.fingerprint();
      if (now !== savedWeights) {
        const dir = config.model.lora !== undefined ? task.policyDir : (task.referenceDir ?? task.policyDir);
        throw new Error(
          `cannot resume ${runDir}: the reference model ${dir} holds other weights than when the run started ` +
            `(fingerprint ${now}, saved ${savedWeights}); restore its files, or start a new run (--overwrite, or ` +
            "another --out directory)",
        );
      }
    }
    // The pool's pairs and cached reference log-probs were computed on the prompts' ids as encoded at the start.
    const savedPrompts = loaded?.state.promptIds;
    if (savedPrompts !== undefined && savedPrompts !== prompts) {
      throw new Error(
        `cannot resume ${runDir}: the prompts encode to other token ids than when the run started (fingerprint ` +
          `${prompts}, saved ${savedPrompts}): the prompt file, the tokenizer or its chat template ` +
          "changed (restore them), or the template writes today's date (Llama 3.2 / 3.3: set " +
          `model.chatTemplateArgs.date_string in ${join(runDir, CONFIG_FILE)} to the date the run started on, as ` +
          'the template writes it, e.g. "26 Jul 2024"); or start a new run (--overwrite, or another --out)',
      );
    }
    // The first training step would refuse a training state that does not fit; refusing it now saves the
    // evaluation, sampling and scoring before it.
    if ((loaded?.state.iteration ?? 0) < config.loop.iterations) await policy.checkTrainingMemory();
    // A run that failed before saving iteration 0 left only its config: a new one starts over in its place.
    if (!resume && dirStatus.kind === "unstarted") clearRunDir(runDir);
    createRunDir(runDir);
    writeJsonAtomic(join(runDir, CONFIG_FILE), config);
  } catch (err) {
    await Promise.all([policy.dispose(), reference.dispose(), proxy.dispose?.(), evaluator.dispose?.()]);
    throw err;
  }
  const ctx: LoopContext = {
    config,
    task,
    runDir,
    reporter,
    shouldStop,
    policy,
    reference,
    proxy,
    evaluator,
    promptsById: new Map(task.trainPrompts.map((p) => [p.id, p] as const)),
    promptIds: new Map(task.trainPrompts.map((p) => [p.id, p.ids] as const)),
    state: loaded?.state ?? {
      iteration: -1,
      pool: createPool(task.trainPrompts.map((p) => p.id)),
      initialEval: { greedy: [], sampled: [] },
    },
  };

  let metrics: IterationMetrics[] = [];
  let status: RunResult["status"] = "completed";
  try {
    if (loaded !== null) {
      await loaded.restoreOptimizer(policy);
      metrics = truncateMetrics(join(runDir, METRICS_FILE), loaded.state.iteration);
      reporter.line(`resuming ${runDir} after iteration ${loaded.state.iteration}`);
      if (loaded.state.iteration >= config.loop.iterations) {
        reporter.line(
          `${runDir} has completed ${loaded.state.iteration} iterations (loop.iterations: ${config.loop.iterations}): ` +
            "nothing to run; give a larger --iterations to extend it",
        );
      }
    } else {
      truncateMetrics(join(runDir, METRICS_FILE), -1);
      ctx.state.referenceWeights = await reference.fingerprint();
      ctx.state.promptIds = prompts;
      const start = await evaluateStart(ctx);
      await saveIteration(ctx, start);
      metrics.push(start);
      reporter.line(describeIteration(start));
      options.onIteration?.(start);
    }

    for (let t = ctx.state.iteration + 1; t <= config.loop.iterations; t++) {
      if (shouldStop()) {
        status = "interrupted";
        break;
      }
      const outcome = await runIteration(ctx, t);
      if (outcome.metrics === null) {
        status = "interrupted";
        break;
      }
      await saveIteration(ctx, outcome.metrics);
      metrics.push(outcome.metrics);
      reporter.line(describeIteration(outcome.metrics));
      options.onIteration?.(outcome.metrics);
    }

    let finalCheckpoint: string | null = null;
    if (status === "completed") {
      finalCheckpoint = checkpointDir(runDir, "final");
      await saveCheckpoint(policy, finalCheckpoint);
    }
    return { status, runDir, metrics, lastIteration: ctx.state.iteration, finalCheckpoint };
  } finally {
    await ctx.policy.dispose();
    await ctx.reference.dispose();
    await proxy.dispose?.();
    await evaluator.dispose?.();
  }
}
