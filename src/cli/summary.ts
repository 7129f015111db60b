// The table printed at the end of `optune run`: one row per iteration with rewards and time.

import type { IterationMetrics } from "../loop/metrics.js";

function cell(value: number | null, digits: number): string {
  return value === null || !Number.isFinite(value) ? "-" : value.toFixed(digits);
}

function withError(mean: number, se: number): string {
  return `${cell(mean, 3)} ± ${cell(2 * se, 3)}`;
}

/**
 * Rows of metrics as an aligned text table (gold columns show mean ± 2 standard errors; length and eos are the
 * sampled eval responses' mean length in tokens and share ended by end-of-sequence).
 */
export function summaryTable(metrics: readonly IterationMetrics[]): string {
  const header = ["iter", "proxy chosen", "proxy eval", "gold greedy", "gold sampled", "win", "KL", "length", "eos", "regen", "seconds"];
  const rows = metrics.map((m) => [
    String(m.iteration),
    cell(m.proxy.chosen, 3),
    cell(m.proxy.evalSampled, 3),
    withError(m.gold.greedy, m.gold.greedySe),
    withError(m.gold.sampled, m.gold.sampledSe),
    cell(m.winRate.sampled, 2),
    cell(m.kl, 2),
    cell(m.lengths?.sampledLength ?? null, 1),
    cell(m.lengths?.sampledEos ?? null, 2),
    String(m.generation.promptsRegenerated),
    cell(m.seconds.total, 1),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] as string).length)));
  const format = (r: readonly string[]) => r.map((v, c) => v.padStart(widths[c] as number)).join("  ");
  return [format(header), ...rows.map(format)].join("\n");
}
