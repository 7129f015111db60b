// Crash safety and deterministic resume through the real CLI (bin/optune.js on the compiled dist/): a tiny run is
// SIGKILLed at seeded random moments, the run directory is checked after each kill (the saved state, its
// optimizer moments and every checkpoint load; nothing half-written is current), the run is resumed, and the
// finished run must equal an uninterrupted one bitwise: metrics.jsonl (without timings), the final weights and
// the final run state (pool with cached reference log-probs).

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { loadConfig } from "../src/config/schema.js";
import { EngineModel } from "../src/engine/index.js";
import { readMetrics } from "../src/loop/metrics.js";
import { loadRunState } from "../src/loop/state.js";
import { ensurePrepared } from "../src/tasks/builtin/prepare.js";
import { Rng } from "../src/util/random.js";

const ROOT = resolve(import.meta.dirname, "..");
const scratch = mkdtempSync(join(tmpdir(), "optune-kill-resume-"));
const configPath = join(scratch, "tiny.json");
const referenceDir = join(scratch, "reference");
const killedDir = join(scratch, "killed");
const ITERATIONS = 4;

// Big enough that an iteration takes a noticeable share of the run (so kills land inside iterations), small
// enough that preparing and running it takes a few seconds.
const CONFIG = {
  seed: 5,
  prepare: {
    trainPrompts: 120,
    heldOutPrompts: 16,
    dModel: 32,
    nLayer: 2,
    nHead: 2,
    dFf: 64,
    sftEpochs: 2,
    sftBatch: 16,
    rewardEpochs: 1,
    rewardPolicySamples: 2,
    rewardBatch: 16,
  },
  loop: { iterations: ITERATIONS, prompts: 96, k: 6, rho: 0.5, batchPairs: 8, tieThreshold: 0 },
  eval: { prompts: 16, samples: 4 },
  optim: { lr: 1e-3 },
  run: { cacheDir: join(scratch, "cache"), checkpointEvery: 1 },
};

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** From spawn to exit, and to the first progress line (null when none came). */
  ms: number;
  progressMs: number | null;
}

interface KillAt {
  /** SIGKILL this long after the process starts... */
  afterSpawnMs?: number;
  /** ...or this long after the first stderr line that matches `line`. */
  line?: RegExp;
  afterLineMs?: number;
}

/** The first line a run prints once it is in the loop: after iteration 0, or after loading the saved state. */
const PROGRESS = /^(iteration \d+:|resuming )/m;

function optune(args: string[], killAt: KillAt = {}): Promise<Exit> {
  return new Promise((resolvePromise, reject) => {
    const started = performance.now();
    const child: ChildProcess = spawn(process.execPath, [join(ROOT, "bin", "optune.js"), "run", ...args], {
      cwd: scratch,
      stdio: ["ignore", "ignore", "pipe"],
    });
    const timers: NodeJS.Timeout[] = [];
    const kill = (ms: number) => timers.push(setTimeout(() => child.kill("SIGKILL"), ms));
    if (killAt.afterSpawnMs !== undefined) kill(killAt.afterSpawnMs);
    let stderr = "";
    let progressMs: number | null = null;
    let lineSeen = false;
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      stderr += chunk;
      if (progressMs === null && PROGRESS.test(stderr)) progressMs = performance.now() - started;
      if (!lineSeen && killAt.line !== undefined && killAt.line.test(stderr)) {
        lineSeen = true;
        kill(killAt.afterLineMs ?? 0);
      }
    });
    child.on("error", reject);
    child.on("close", (code, signal) => {
      for (const t of timers) clearTimeout(t);
      resolvePromise({ code, signal, stderr, ms: performance.now() - started, progressMs });
    });
  });
}

/** Every file and directory name under `dir`, recursively, as paths relative to it. */
function walk(dir: string, prefix = ""): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((e) => {
    const rel = join(prefix, e.name);
    return e.isDirectory() ? [rel, ...walk(dir, rel)] : [rel];
  });
}

/** The run directory right after a kill: what it calls current must be complete and load. */
async function expectLoadable(dir: string): Promise<void> {
  if (existsSync(join(dir, "config.json"))) loadConfig(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")));
  const latest = join(dir, "state", "latest.json");
  if (existsSync(latest)) {
    const pointer = JSON.parse(readFileSync(latest, "utf8")) as { iteration: number; dir: string };
    expect(pointer.dir).toMatch(/^iter-\d{4}$/);
    const loaded = loadRunState(dir)!;
    expect(loaded.state.iteration).toBe(pointer.iteration);
    const policy = await EngineModel.load(loaded.policyDir);
    await loaded.restoreOptimizer(policy);
    await policy.dispose();
    // metrics.jsonl is written before the state, so it holds every saved iteration (and maybe the next).
    const iterations = readMetrics(join(dir, "metrics.jsonl")).map((m) => m.iteration);
    expect(iterations.slice(0, pointer.iteration + 1)).toEqual([...Array(pointer.iteration + 1).keys()]);
  }
  const checkpoints = join(dir, "checkpoints");
  for (const name of existsSync(checkpoints) ? readdirSync(checkpoints) : []) {
    if (!/^(iter-\d{4}|final)$/.test(name)) continue; // a killed save's temp directory, never used
    const model = await EngineModel.load(join(checkpoints, name));
    await model.dispose();
  }
}

function savedIteration(dir: string): number {
  const latest = join(dir, "state", "latest.json");
  return existsSync(latest) ? (JSON.parse(readFileSync(latest, "utf8")) as { iteration: number }).iteration : -1;
}

/** Continues the run in killedDir: --resume once it has a saved config, else a fresh start. */
function continueArgs(): string[] {
  return existsSync(join(killedDir, "config.json"))
    ? ["--resume", "--out", killedDir]
    : ["--config", configPath, "--out", killedDir];
}

function metricsWithoutTimes(dir: string): unknown[] {
  return readMetrics(join(dir, "metrics.jsonl")).map(({ seconds: _seconds, ...rest }) => rest);
}

async function finalParams(dir: string): Promise<Buffer> {
  const model = await EngineModel.load(join(dir, "checkpoints", "final"));
  const params = await model.getParams();
  await model.dispose();
  return Buffer.from(params.buffer, params.byteOffset, params.byteLength);
}

let reference: Exit;

beforeAll(async () => {
  // The CLI runs the compiled code, so compile the sources under test first.
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (tsc.status !== 0) throw new Error(`tsc failed:\n${tsc.stdout}${tsc.stderr}`);
  writeFileSync(configPath, JSON.stringify(CONFIG, null, 2));
  // Prepared once here, so every timed run below starts from the cache.
  await ensurePrepared(loadConfig(CONFIG).prepare, CONFIG.run.cacheDir);
  reference = await optune(["--config", configPath, "--out", referenceDir]);
  if (reference.code !== 0) throw new Error(`the uninterrupted run failed:\n${reference.stderr}`);
}, 120_000);

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("SIGKILL and --resume", () => {
  it("leaves a loadable run directory after each kill and resumes to the uninterrupted run's results, bitwise", async () => {
    const rng = new Rng(20240607);
    // Iterations 1..N take about this long each (with their saves); iteration 0 only evaluates.
    const iterationMs = (reference.ms - reference.progressMs!) / ITERATIONS;
    let kills = 0;
    for (let attempt = 0; attempt < 4; attempt++) {
      let killAt: KillAt;
      const saved = savedIteration(killedDir);
      if (attempt === 0 || saved === ITERATIONS) {
        // Anywhere from start-up on (the first kill; or a finished run, which still saves its final checkpoint).
        killAt = { afterSpawnMs: rng.uniform() * (attempt === 0 ? reference.ms : reference.progressMs! + iterationMs) };
      } else {
        // Inside the next iteration or the one after: timed from the line that ends the one before it (or from
        // the first progress line), so the kill lands there however loaded the machine is, and the kills spread
        // over the run.
        const target = Math.min(ITERATIONS, saved + 1 + Math.floor(rng.uniform() * 2));
        const line = target - 1 > saved ? new RegExp(`^iteration ${target - 1}:`, "m") : PROGRESS;
        killAt = { line, afterLineMs: rng.uniform() * 0.9 * iterationMs };
      }
      const exit = await optune(continueArgs(), killAt);
      if (exit.signal === "SIGKILL") kills += 1;
      else expect(exit.code, `a run that was not killed must succeed:\n${exit.stderr}`).toBe(0);
      await expectLoadable(killedDir);
    }
    expect(kills).toBeGreaterThanOrEqual(3);

    const last = await optune(continueArgs());
    expect(last.code, last.stderr).toBe(0);
    expect(last.stderr).not.toMatch(/^\s+at /m);

    expect(metricsWithoutTimes(killedDir)).toEqual(metricsWithoutTimes(referenceDir));
    expect(metricsWithoutTimes(killedDir).length).toBe(ITERATIONS + 1);
    expect((await finalParams(killedDir)).equals(await finalParams(referenceDir))).toBe(true);
    expect(loadRunState(killedDir)!.state).toEqual(loadRunState(referenceDir)!.state);
    // The resume removed what the killed saves left behind.
    expect(walk(killedDir).filter((p) => /\.tmp|\.old-/.test(p))).toEqual([]);
  }, 90_000);
});
