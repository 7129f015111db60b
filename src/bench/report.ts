// The bench's written outputs: results.json (every run's per-iteration records, and the aggregates) and
// results.md (the tables). Generation compute is compared with the `all` arm of the same loss, which regenerates
// every prompt every iteration.

import { join } from "node:path";

import { writeFileAtomic, writeJsonAtomic } from "../util/atomic.js";
import type { ArmAggregate, PairedDifference, Spread } from "./aggregate.js";
import type { Arm, BenchResult } from "./arms.js";

export const RESULTS_JSON = "results.json";
export const RESULTS_MD = "results.md";

function fixed(value: number | null, digits: number): string {
  return value === null || !Number.isFinite(value) ? "-" : value.toFixed(digits);
}

function meanStd(s: Spread): string {
  return s.std === null ? fixed(s.mean, 3) : `${fixed(s.mean, 3)} ± ${fixed(s.std, 3)}`;
}

function signed(value: number, digits: number): string {
  return `${value >= 0 ? "+" : ""}${value.toFixed(digits)}`;
}

function paired(d: PairedDifference | null): string {
  if (d === null) return "-";
  return `${signed(d.mean, 4)}${d.se === null ? "" : ` ± ${fixed(d.se, 4)}`} (lower on ${d.lower}/${d.seeds})`;
}

function percentOf(value: number, reference: number): string {
  return reference > 0 ? `${((100 * value) / reference).toFixed(0)}%` : "-";
}

/** The `all` arm with the same loss as `arm`: the full-regeneration reference for generation compute. */
export function allArmFor(arm: Arm, result: BenchResult): ArmAggregate | undefined {
  return result.aggregate.arms.find((a) => a.id === `all+${arm.settings.loss}`);
}

function aggregateOf(arm: Arm, result: BenchResult): ArmAggregate {
  return result.aggregate.arms.find((a) => a.id === arm.id) as ArmAggregate;
}

function row(arm: Arm, result: BenchResult, withSeeds: boolean): string {
  const a = aggregateOf(arm, result);
  const all = allArmFor(arm, result);
  const s = a.totals.seconds;
  const reached = a.timeToTarget.seconds === null ? "not reached" : `${fixed(a.timeToTarget.seconds, 2)} (it. ${a.timeToTarget.iteration})`;
  const cells = [
    arm.id,
    ...(withSeeds ? [String(a.seeds.length)] : []),
    meanStd(a.finalGold),
    paired(a.finalGoldVsBaseline),
    reached,
    a.speedup === null ? "-" : `${fixed(a.speedup, 2)}x`,
    `${fixed(s.generation, 2)} / ${fixed(s.scoring, 2)} / ${fixed(s.training, 2)} / ${fixed(s.other, 2)} = ${fixed(s.wall, 2)}` +
      ` (${all === undefined ? "-" : percentOf(s.wall, all.totals.seconds.wall)})`,
    `${fixed(a.medianWall, 2)} (${all === undefined ? "-" : percentOf(a.medianWall, all.medianWall)})`,
    `${a.totals.tokensGenerated.toFixed(0)} (${all === undefined ? "-" : percentOf(a.totals.tokensGenerated, all.totals.tokensGenerated)})`,
    `${fixed(s.generation, 2)} (${all === undefined ? "-" : percentOf(s.generation, all.totals.seconds.generation)})`,
  ];
  return `| ${cells.join(" | ")} |`;
}

function table(arms: readonly Arm[], result: BenchResult, withSeeds: boolean): string[] {
  const header = [
    "arm",
    ...(withSeeds ? ["seeds"] : []),
    "final gold (mean ± std)",
    `final gold − ${result.aggregate.baseline}, paired (± SE)`,
    "time to target, s",
    `speedup vs ${result.aggregate.baseline}`,
    "wall-clock s: gen / score / train / other = total (vs all)",
    "median wall-clock s (vs all)",
    "tokens generated (vs all)",
    "generation s (vs all)",
  ];
  return [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`, ...arms.map((arm) => row(arm, result, withSeeds))];
}

function seedRange(seeds: readonly number[]): string {
  return seeds.length === 1 ? `seed ${seeds[0]}` : `${seeds.length} seeds (${seeds[0]}-${seeds[seeds.length - 1]})`;
}

/** The Markdown report: settings, the main table, the ablation tables, and what the columns mean. */
export function markdownReport(result: BenchResult): string {
  const { config, aggregate, machine } = result;
  const main = result.arms.filter((a) => a.group === "main");
  const statistic = result.arms.filter((a) => a.group === "statistic");
  const weightFn = result.arms.filter((a) => a.group === "weightFn");
  const evalSeconds = aggregate.arms.reduce((sum, a) => sum + a.totals.seconds.evaluation, 0) / aggregate.arms.length;
  const lines = [
    `Preset \`${result.preset}\`: ${config.task} task, ${config.loop.prompts} prompts, ${config.loop.iterations} iterations, ` +
      `rho ${config.loop.rho}, K ${config.loop.k}, ${config.loop.epochs} epoch(s) of batch ${config.loop.batchPairs}, ` +
      `beta ${config.loss.beta}, lr ${config.optim.lr}, statistic ${config.loop.statistic}, weightFn ${config.loss.weightFn}; ` +
      `${config.eval.prompts} eval prompts. Main arms: ${seedRange(main[0]?.seeds ?? [])}.`,
    `Gold reward: ${aggregate.gold === "sampled" ? `mean gold reward of the ${config.eval.samples} sampled responses per eval prompt` : "gold reward of the greedy response per eval prompt"}; ` +
      `starting policy ${fixed(aggregate.start, 3)}; target = ${aggregate.baseline}'s final seed-mean ${fixed(aggregate.target, 3)}.`,
    `Machine: ${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, 1-min load ${fixed(machine.loadStart, 2)} at start, ` +
      `${fixed(machine.loadEnd, 2)} at end; the bench took ${fixed(result.benchSeconds, 0)} s` +
      (result.git === null ? "." : `; commit ${result.git.commit.slice(0, 7)}${result.git.dirty ? " with uncommitted changes" : ""}.`),
    "",
    ...table(main, result, false),
  ];
  const baselineReached = aggregate.arms.find((a) => a.id === aggregate.baseline)?.timeToTarget.iteration ?? null;
  if (baselineReached !== null && baselineReached <= 1) {
    // Iteration 1 regenerates every prompt in every arm: reaching the target there compares timings of the same work.
    lines.push(
      "",
      `Note: ${aggregate.baseline} already reaches its final gold in iteration ${baselineReached}; iteration 1 regenerates every ` +
        "prompt in every arm, so the times to target compare the same work, and the speedups are timing noise.",
    );
  }
  for (const [title, group] of [
    ["selection statistic", statistic],
    ["wDPO weight function", weightFn],
  ] as const) {
    const first = group[0];
    if (first === undefined) continue;
    const target = aggregateOf(first, result).target;
    lines.push(
      "",
      `Ablation, ${title} (${seedRange(first.seeds)}; target: ${aggregate.baseline}'s final gold on the same seeds, ${fixed(target, 3)}):`,
      "",
      ...table(group, result, true),
    );
  }
  lines.push(
    "",
    "Wall-clock is the loop's time to improve the policy, summed over iterations and averaged over seeds: generation, " +
      "scoring (proxy reward + reference log-probs of the new pairs), training, and other (bookkeeping, reference refresh). " +
      `Evaluation is not part of it (it measures the policy; about ${fixed(evalSeconds, 2)} s per run here). ` +
      "Time to target: the first iteration whose seed-mean gold reaches the target, interpolated linearly in seed-mean " +
      "wall-clock from the iteration before; 0 when the starting policy already reaches it. Speedup = the baseline's time " +
      "to target / the arm's. ± is the sample standard deviation over seeds. Wall-clock, tokens and generation seconds " +
      "are compared with the `all` arm of the same loss (over the same iterations). The median wall-clock is over seeds " +
      "(a run slowed by the machine moves the mean, not the median). The paired final gold is the arm's minus the " +
      "baseline's on each seed, averaged, ± its standard error over seeds, and on how many seeds the arm ends lower.",
  );
  return `${lines.join("\n")}\n`;
}

/** results.json and results.md in the bench directory (next to the plot). */
export function writeReports(result: BenchResult): void {
  writeJsonAtomic(result.outputs.json, result);
  writeFileAtomic(result.outputs.markdown, markdownReport(result));
}

export function outputPaths(out: string): { json: string; markdown: string } {
  return { json: join(out, RESULTS_JSON), markdown: join(out, RESULTS_MD) };
}
