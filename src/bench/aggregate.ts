// Aggregates of a bench's runs: per arm, the seed-mean learning curve (gold reward against the arm's wall-clock),
// the time to reach the target gold reward, the final gold reward over seeds, and the generation work done.
//
// An arm's wall-clock is what the loop spends to improve the policy: per iteration, seconds.total minus
// seconds.evaluation (generation + scoring + training + reference refresh and bookkeeping). Evaluation is left
// out because it measures the policy rather than training it, and costs every arm the same. Iteration 0 (the
// starting policy, evaluation only) sits at 0 seconds.
//
// Time to target: the seed-mean curve is the points (T_t, G_t), T_t = mean over seeds of the wall-clock up to
// iteration t, G_t = mean over seeds of the gold reward after iteration t. The target is G_final of the
// baseline arm (all + dpo). The time to target is that of the first t with G_t >= target, interpolated linearly
// in time between (T_{t-1}, G_{t-1}) and (T_t, G_t); 0 when G_0 already meets it; null (not reached) when no
// iteration does. speedup = baseline time to target / arm time to target (null when either is null or 0).
// An arm run on fewer seeds than the baseline (an ablation) is compared with the baseline on its own seeds: the
// target and the baseline's time come from those seeds' runs only, so both sides average the same seeds.
//
// Two robust summaries go beside the means: the median over seeds of a run's wall-clock (a machine that slows some
// runs moves the mean, not the median), and the final gold's difference from the baseline paired by seed (each
// seed's runs share the pool, sampling streams and evaluation prompts), with its standard error over seeds.

import type { IterationMetrics } from "../loop/metrics.js";

export type GoldKind = "sampled" | "greedy";

export interface ArmRuns {
  id: string;
  /** One metrics list per seed, each from iteration 0 to the last. */
  runs: { seed: number; metrics: IterationMetrics[] }[];
}

export interface Spread {
  mean: number;
  /** Sample standard deviation over seeds (n - 1); null with a single seed. */
  std: number | null;
  min: number;
  max: number;
}

export interface CurvePoint {
  iteration: number;
  /** Cumulative arm wall-clock (seconds) up to and including this iteration, over seeds. */
  seconds: Spread;
  gold: Spread;
  /** Mean proxy reward of the sampled eval responses, over seeds. */
  proxyEval: Spread;
  /** Cumulative tokens generated for the pool, over seeds. */
  tokens: Spread;
}

export interface SecondsSplit {
  generation: number;
  scoring: number;
  training: number;
  /** Reference refresh and bookkeeping: wall minus the three above. */
  other: number;
  /** The arm's wall-clock (evaluation excluded). */
  wall: number;
  /** Evaluation, reported apart; not part of wall. */
  evaluation: number;
}

/** Arm minus baseline, seed by seed. */
export interface PairedDifference {
  mean: number;
  /** Standard error of the mean difference (sample std / sqrt(n)); null with a single seed. */
  se: number | null;
  /** Seeds on which the arm ends below the baseline. */
  lower: number;
  seeds: number;
}

export interface ArmAggregate {
  id: string;
  seeds: number[];
  curve: CurvePoint[];
  finalGold: Spread;
  /** Final gold minus the baseline's on the same seeds; null for the baseline itself. */
  finalGoldVsBaseline: PairedDifference | null;
  /** Seed means of whole-run totals. */
  totals: { seconds: SecondsSplit; tokensGenerated: number; promptsRegenerated: number };
  /** Median over seeds of a run's wall-clock (evaluation excluded). */
  medianWall: number;
  /** The baseline's final seed-mean gold on this arm's seeds. */
  target: number;
  timeToTarget: { seconds: number | null; iteration: number | null };
  speedup: number | null;
}

export function spread(values: readonly number[]): Spread {
  if (values.length === 0) throw new RangeError("spread of no values");
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std =
    values.length < 2 ? null : Math.sqrt(values.reduce((a, v) => a + (v - mean) * (v - mean), 0) / (values.length - 1));
  return { mean, std, min: Math.min(...values), max: Math.max(...values) };
}

/** Seconds the loop spent improving the policy in one iteration (evaluation excluded). */
export function armSeconds(m: IterationMetrics): number {
  return Math.max(0, m.seconds.total - m.seconds.evaluation);
}

export function goldOf(m: IterationMetrics, kind: GoldKind): number {
  return kind === "greedy" ? m.gold.greedy : m.gold.sampled;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of no values");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Arm minus baseline final gold, seed by seed (every arm seed must be a baseline seed). */
export function pairedDifference(arm: ArmRuns, baseline: ArmRuns, gold: GoldKind): PairedDifference {
  const final = (run: ArmRuns["runs"][number]) => goldOf(run.metrics[run.metrics.length - 1] as IterationMetrics, gold);
  const diffs = baselineOn(baseline, arm.runs.map((r) => r.seed)).runs.map((b, i) => final(arm.runs[i]!) - final(b));
  const s = spread(diffs);
  return { mean: s.mean, se: s.std === null ? null : s.std / Math.sqrt(diffs.length), lower: diffs.filter((d) => d < 0).length, seeds: diffs.length };
}

/** Running sums of f over a run's iterations. */
function cumulative(metrics: readonly IterationMetrics[], f: (m: IterationMetrics) => number): number[] {
  let sum = 0;
  return metrics.map((m) => (sum += f(m)));
}

function checkRuns(arm: ArmRuns): number {
  if (arm.runs.length === 0) throw new Error(`bench arm ${arm.id}: no runs`);
  const length = (arm.runs[0] as ArmRuns["runs"][number]).metrics.length;
  for (const run of arm.runs) {
    if (run.metrics.length !== length) {
      throw new Error(`bench arm ${arm.id}: seed ${run.seed} has ${run.metrics.length} iterations, expected ${length}`);
    }
    run.metrics.forEach((m, t) => {
      if (m.iteration !== t) throw new Error(`bench arm ${arm.id}: seed ${run.seed} record ${t} is iteration ${m.iteration}`);
    });
  }
  return length;
}

export function armCurve(arm: ArmRuns, gold: GoldKind): CurvePoint[] {
  const length = checkRuns(arm);
  const seconds = arm.runs.map((r) => cumulative(r.metrics, armSeconds));
  const tokens = arm.runs.map((r) => cumulative(r.metrics, (m) => m.generation.tokensGenerated));
  const curve: CurvePoint[] = [];
  for (let t = 0; t < length; t++) {
    const at = arm.runs.map((r) => r.metrics[t] as IterationMetrics);
    curve.push({
      iteration: t,
      seconds: spread(seconds.map((s) => s[t] as number)),
      gold: spread(at.map((m) => goldOf(m, gold))),
      proxyEval: spread(at.map((m) => m.proxy.evalSampled)),
      tokens: spread(tokens.map((s) => s[t] as number)),
    });
  }
  return curve;
}

/** When the seed-mean curve first reaches `target` (see the header); null seconds when it never does. */
export function timeToTarget(curve: readonly CurvePoint[], target: number): { seconds: number | null; iteration: number | null } {
  for (let t = 0; t < curve.length; t++) {
    const point = curve[t] as CurvePoint;
    if (point.gold.mean < target) continue;
    if (t === 0) return { seconds: 0, iteration: 0 };
    const before = curve[t - 1] as CurvePoint;
    // before.gold.mean < target <= point.gold.mean, so the fraction is in (0, 1].
    const fraction = (target - before.gold.mean) / (point.gold.mean - before.gold.mean);
    return { seconds: before.seconds.mean + fraction * (point.seconds.mean - before.seconds.mean), iteration: t };
  }
  return { seconds: null, iteration: null };
}

export function speedupOver(baselineSeconds: number | null, armSecondsToTarget: number | null): number | null {
  if (baselineSeconds === null || armSecondsToTarget === null) return null;
  if (baselineSeconds <= 0 || armSecondsToTarget <= 0) return null;
  return baselineSeconds / armSecondsToTarget;
}

function totals(arm: ArmRuns): ArmAggregate["totals"] {
  const perRun = arm.runs.map((r) => {
    const sum = (f: (m: IterationMetrics) => number) => r.metrics.reduce((a, m) => a + f(m), 0);
    const generation = sum((m) => m.seconds.generation);
    const scoring = sum((m) => m.seconds.scoring);
    const training = sum((m) => m.seconds.training);
    const wall = sum(armSeconds);
    return {
      seconds: { generation, scoring, training, other: wall - generation - scoring - training, wall, evaluation: sum((m) => m.seconds.evaluation) },
      tokens: sum((m) => m.generation.tokensGenerated),
      prompts: sum((m) => m.generation.promptsRegenerated),
    };
  });
  const meanOf = (f: (r: (typeof perRun)[number]) => number) => perRun.reduce((a, r) => a + f(r), 0) / perRun.length;
  return {
    seconds: {
      generation: meanOf((r) => r.seconds.generation),
      scoring: meanOf((r) => r.seconds.scoring),
      training: meanOf((r) => r.seconds.training),
      other: meanOf((r) => r.seconds.other),
      wall: meanOf((r) => r.seconds.wall),
      evaluation: meanOf((r) => r.seconds.evaluation),
    },
    tokensGenerated: meanOf((r) => r.tokens),
    promptsRegenerated: meanOf((r) => r.prompts),
  };
}

export interface BenchAggregate {
  gold: GoldKind;
  baseline: string;
  /** The baseline's final seed-mean gold reward over all its seeds (the main arms' target). */
  target: number;
  /** The starting policy's seed-mean gold reward (iteration 0 of the baseline). */
  start: number;
  arms: ArmAggregate[];
}

/** The baseline's runs on `seeds` (all of them must be among its seeds). */
function baselineOn(baseline: ArmRuns, seeds: readonly number[]): ArmRuns {
  const runs = seeds.map((seed) => {
    const run = baseline.runs.find((r) => r.seed === seed);
    if (run === undefined) throw new Error(`bench: the baseline ${baseline.id} has no run with seed ${seed}`);
    return run;
  });
  return { id: baseline.id, runs };
}

/** The baseline's final seed-mean gold and its own time to reach it. */
function baselineTarget(baseline: ArmRuns, gold: GoldKind): { target: number; seconds: number | null } {
  const curve = armCurve(baseline, gold);
  const target = (curve[curve.length - 1] as CurvePoint).gold.mean;
  return { target, seconds: timeToTarget(curve, target).seconds };
}

/** Aggregates every arm against the baseline arm (its id must be among `arms`). */
export function aggregateBench(arms: readonly ArmRuns[], baselineId: string, gold: GoldKind): BenchAggregate {
  const baseline = arms.find((a) => a.id === baselineId);
  if (baseline === undefined) throw new Error(`bench: no baseline arm ${baselineId}`);
  const overall = baselineTarget(baseline, gold);
  return {
    gold,
    baseline: baselineId,
    target: overall.target,
    start: (armCurve(baseline, gold)[0] as CurvePoint).gold.mean,
    arms: arms.map((arm) => {
      const seeds = arm.runs.map((r) => r.seed);
      const { target, seconds: baselineSeconds } = baselineTarget(baselineOn(baseline, seeds), gold);
      const curve = armCurve(arm, gold);
      const reached = timeToTarget(curve, target);
      return {
        id: arm.id,
        seeds,
        curve,
        finalGold: (curve[curve.length - 1] as CurvePoint).gold,
        finalGoldVsBaseline: arm.id === baselineId ? null : pairedDifference(arm, baseline, gold),
        totals: totals(arm),
        medianWall: median(arm.runs.map((r) => r.metrics.reduce((a, m) => a + armSeconds(m), 0))),
        target,
        timeToTarget: reached,
        speedup: speedupOver(baselineSeconds, reached.seconds),
      };
    }),
  };
}
