// The bench plot: seed-mean gold reward against seed-mean arm wall-clock, one line per main arm, with a band
// from the lowest to the highest seed at each iteration, and the target as a dashed rule. A Vega-Lite spec is
// compiled to Vega, rendered headless to SVG by vega.View, and rasterized to PNG by resvg (no network needed).

import { Resvg } from "@resvg/resvg-js";
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";

import { writeFileAtomic } from "../util/atomic.js";
import type { BenchResult } from "./arms.js";

export const PLOT_PNG = "gold-vs-wallclock.png";

// Dark for dpo, light for wdpo, one hue per strategy (Tableau 20 pairs), so each line's arm reads at a glance.
const ARM_COLORS: Readonly<Record<string, string>> = {
  "all+dpo": "#1f77b4",
  "all+wdpo": "#6baed6",
  "uniform+dpo": "#d95f02",
  "uniform+wdpo": "#fdae6b",
  "optune+dpo": "#2ca02c",
  "optune+wdpo": "#98df8a",
};
// DejaVu Sans ships with most Linux systems; resvg falls back to any system font without it.
const FONT = "DejaVu Sans";

interface PlotRow {
  arm: string;
  loss: string;
  iteration: number;
  seconds: number;
  gold: number;
  goldMin: number;
  goldMax: number;
}

function plotRows(result: BenchResult): PlotRow[] {
  const main = result.arms.filter((a) => a.group === "main");
  return main.flatMap((arm) => {
    const aggregate = result.aggregate.arms.find((a) => a.id === arm.id);
    return (aggregate?.curve ?? []).map((p) => ({
      arm: arm.id,
      loss: arm.settings.loss,
      iteration: p.iteration,
      seconds: p.seconds.mean,
      gold: p.gold.mean,
      goldMin: p.gold.min,
      goldMax: p.gold.max,
    }));
  });
}

export function plotSpec(result: BenchResult): TopLevelSpec {
  const rows = plotRows(result);
  const arms = [...new Set(rows.map((r) => r.arm))];
  const lossOf = new Map(rows.map((r) => [r.arm, r.loss] as const));
  // Legend symbols drawn as opaque strokes: the bands' fill opacity would otherwise make them faint.
  const color = {
    field: "arm",
    type: "nominal",
    title: "arm",
    scale: { domain: arms, range: arms.map((a) => ARM_COLORS[a] ?? "#7f7f7f") },
    legend: { symbolType: "stroke", symbolStrokeWidth: 3, symbolOpacity: 1, symbolSize: 300 },
  } as const;
  const x = { field: "seconds", type: "quantitative", title: "arm wall-clock, s (generation + scoring + training, no evaluation; seed mean)" } as const;
  const { aggregate, config } = result;
  const seeds = result.arms.find((a) => a.group === "main")?.seeds.length ?? 0;
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: {
      text: `Gold reward (${aggregate.gold}) vs wall-clock: ${config.task} task, rho ${config.loop.rho}, K ${config.loop.k}`,
      subtitle: `line: mean of ${seeds} seeds; band: min-max over seeds; dashed rule: target (${aggregate.baseline} final, ${aggregate.target.toFixed(3)})`,
    },
    width: 640,
    height: 400,
    background: "white",
    config: { font: FONT, axis: { labelFontSize: 12, titleFontSize: 13 }, legend: { labelFontSize: 12, titleFontSize: 13 } },
    layer: [
      {
        data: { values: rows },
        mark: { type: "area", opacity: 0.1 },
        encoding: {
          x,
          y: { field: "goldMin", type: "quantitative", title: `gold reward (${aggregate.gold})`, scale: { zero: false } },
          y2: { field: "goldMax" },
          color,
        },
      },
      {
        data: { values: rows },
        mark: { type: "line", point: true, strokeWidth: 2 },
        encoding: {
          x,
          y: { field: "gold", type: "quantitative" },
          color,
          // Dashes by arm too (wdpo dashed), so the one arm legend shows both color and dash.
          strokeDash: { ...color, scale: { domain: arms, range: arms.map((a) => (lossOf.get(a) === "wdpo" ? [6, 3] : [1, 0])) } },
        },
      },
      {
        data: { values: [{ target: aggregate.target }] },
        mark: { type: "rule", strokeDash: [3, 3], color: "#444444" },
        encoding: { y: { field: "target", type: "quantitative" } },
      },
    ],
  };
}

/** The plot as SVG text, rendered headless. */
export async function plotSvg(result: BenchResult): Promise<string> {
  const view = new vega.View(vega.parse(compile(plotSpec(result)).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Writes the plot as a PNG at twice the spec's size (readable when scaled down in a README). */
export async function writePlot(result: BenchResult, path: string): Promise<void> {
  const svg = await plotSvg(result);
  const png = new Resvg(svg, { fitTo: { mode: "zoom", value: 2 }, font: { loadSystemFonts: true, defaultFontFamily: FONT } })
    .render()
    .asPng();
  writeFileAtomic(path, png);
}
