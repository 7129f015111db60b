// Bad input through the whole program (issue 7): each case must end in one clear message (what, where, how to fix)
// and an exit code, never a crash, an abort or an unhandled rejection, and must not cost the iterations already
// saved. The parsers' own cases are unit-tested next to them (config, prompts_file, tokenizer, rewards_module,
// rewards_http); here they go through `optune run` (in-process main(), and the real bin/optune.js where the
// process matters), plus resuming under another config and non-finite training steps. docs/errors.md lists them.

import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";

import { readConfigFile } from "../src/cli/config_file.js";
import { main } from "../src/cli/index.js";
import { type Config, type ConfigInput, loadConfig } from "../src/config/schema.js";
import { EngineModel, type TrainStepOptions } from "../src/engine/index.js";
import { readMetrics } from "../src/loop/metrics.js";
import { runLoop } from "../src/loop/run.js";
import { loadRunState } from "../src/loop/state.js";
import { trainOnPool } from "../src/loop/train.js";
import { createBuiltinTask } from "../src/tasks/builtin/task.js";
import { Rng } from "../src/util/random.js";
import { TINY_TASK } from "./tiny_task.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURES = join(ROOT, "test", "fixtures", "hf");
const scratch = mkdtempSync(join(tmpdir(), "optune-bad-input-"));
const cacheDir = join(scratch, "cache");

// --- helpers -------------------------------------------------------------------------------------------------

/** `optune run ...` in this process: exit code and what went to stderr. */
async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  const errors: string[] = [];
  const error = vi.spyOn(console, "error").mockImplementation((...parts) => void errors.push(parts.join(" ")));
  const log = vi.spyOn(console, "log").mockImplementation(() => {});
  try {
    const code = await main(["node", "optune", "run", ...args]);
    return { code, stderr: errors.join("\n") };
  } finally {
    error.mockRestore();
    log.mockRestore();
  }
}

/** The real CLI process (compiled dist/), asynchronously so this process can serve HTTP meanwhile. */
function optuneProcess(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [join(ROOT, "bin", "optune.js"), ...args], { cwd: scratch, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", fail);
    child.on("close", (code, signal) => done({ code, signal, stderr }));
  });
}

const STACK_LINE = /^\s+at /m;

/** A failure as the user must see it: exit code 1, the message, no stack trace. */
function expectCleanFailure(run: { code: number | null; stderr: string }, message: string | RegExp): void {
  expect(run.code, run.stderr).toBe(1);
  if (typeof message === "string") expect(run.stderr).toContain(message);
  else expect(run.stderr).toMatch(message);
  expect(run.stderr).not.toMatch(STACK_LINE);
}

function write(name: string, text: string): string {
  const path = join(scratch, name);
  writeFileSync(path, text);
  return path;
}

/**
 * A reward module that scores the eval batches (3 prompts x 1 sample) and misbehaves with `body` on the training
 * batch (8 prompts x 2 samples), so the run fails in iteration 1, after iteration 0 is saved.
 */
function badModule(name: string, body: string): string {
  return write(`${name}.mjs`, `export function score(batch) {\n  if (batch.responses.length <= 3) return batch.responses.map(() => 0);\n  ${body}\n}\n`);
}

/** A `task: user` config file on the tiny SmolLM fixture; `reward` is the training reward's source list. */
function userConfig(name: string, fields: { reward: unknown[]; policy?: string; prompts?: string }): string {
  const config = {
    task: "user",
    seed: 3,
    model: { policy: fields.policy ?? join(FIXTURES, "smollm") },
    prompts: { file: fields.prompts ?? join(FIXTURES, "prompts.jsonl"), evalCount: 3, seed: 1 },
    reward: { sources: fields.reward, evalSources: [{ type: "module", path: goodModule }] },
    loop: { iterations: 2, prompts: 8, k: 2, batchPairs: 4 },
    eval: { prompts: 3, samples: 1 },
    sampling: { maxNewTokens: 8 },
    optim: { lr: 1e-3 },
    run: { dir: join(scratch, "runs", name), checkpointEvery: 1 },
  };
  return write(`${name}.json`, JSON.stringify(config, null, 2));
}

function savedIteration(runDir: string): number | null {
  return loadRunState(runDir)?.state.iteration ?? null;
}

let goodModule: string;
let server: Server;
let httpUrl: string;

beforeAll(async () => {
  // The process tests run the compiled CLI, so compile the sources under test first.
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (tsc.status !== 0) throw new Error(`tsc failed:\n${tsc.stdout}${tsc.stderr}`);
  goodModule = write("good.mjs", "export function score(batch) { return batch.responses.map((r) => r.length / 10); }\n");
  // A reward service that answers the eval batches and is down for the training batch (see badModule).
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")));
    req.on("end", () => {
      const { responses } = JSON.parse(body) as { responses: string[] };
      if (responses.length <= 3) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ rewards: responses.map(() => 0) }));
      } else {
        res.writeHead(503, { "content-type": "text/plain" });
        res.end("maintenance");
      }
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  httpUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/score`;
}, 120_000);

afterEach(() => vi.restoreAllMocks());

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((done) => server.close(done));
  rmSync(scratch, { recursive: true, force: true });
});

// --- the CLI process ------------------------------------------------------------------------------------------

describe("the optune process", () => {
  it("prints one line for a config file that does not parse, and the stack with --debug", async () => {
    const file = write("broken.json", '{ "loop": { "k": 4, } }');
    const plain = await optuneProcess(["run", "--config", file]);
    expectCleanFailure(plain, `optune: ${file}: `);
    expect(plain.stderr.trim().split("\n")).toHaveLength(1);
    const debug = await optuneProcess(["run", "--debug", "--config", file]);
    expect(debug.code).toBe(1);
    expect(debug.stderr).toContain(`optune: Error: ${file}: `);
    expect(debug.stderr).toMatch(STACK_LINE);
    expect(debug.stderr).toContain("caused by: SyntaxError"); // the JSON parser's own error
  });

  it("turns a rejection nobody awaited (in a reward module) into a clean failure, keeping iteration 0", async () => {
    const stray = badModule(
      "stray",
      "Promise.reject(new Error('judge connection dropped')); // never awaited\n" +
        "  return new Promise((done) => setTimeout(() => done(batch.responses.map(() => 0)), 50));",
    );
    const config = userConfig("stray", { reward: [{ type: "module", path: stray }] });
    const run = await optuneProcess(["run", "--config", config]);
    expectCleanFailure(run, "optune: judge connection dropped\n(raised by code nobody awaited, e.g. in a reward module");
    expect(run.signal).toBeNull();
    expect(run.stderr).not.toMatch(/UnhandledPromiseRejection|node:internal/);
    expect(savedIteration(join(scratch, "runs", "stray"))).toBe(0);
  });

  it("names an HTTP reward endpoint that keeps failing, and keeps iteration 0", async () => {
    const config = userConfig("http", { reward: [{ type: "http", url: httpUrl, retries: 1, backoffMs: 1 }] });
    const run = await optuneProcess(["run", "--config", config]);
    expectCleanFailure(run, /optune: .*failed for items 0\.\.\d+ after 2 attempts: HTTP 503/);
    expect(run.signal).toBeNull();
    expect(savedIteration(join(scratch, "runs", "http"))).toBe(0);
  });
});

// --- optune run, in process ---------------------------------------------------------------------------------

describe("optune run on bad input", () => {
  it("a config file that does not exist or has another extension", async () => {
    expectCleanFailure(await cli(["--config", join(scratch, "missing.yaml")]), `optune: config file ${join(scratch, "missing.yaml")}: no such file (check the --config path; it is relative to the current directory)`);
    const toml = write("run.toml", "seed = 1\n");
    expectCleanFailure(await cli(["--config", toml]), `optune: ${toml}: config files must end in .yaml, .yml or .json`);
  });

  it("a YAML config file that does not parse, named with the line", async () => {
    const file = write("broken.yaml", "loop:\n  k: [1\n");
    expectCleanFailure(await cli(["--config", file]), new RegExp(`^optune: ${file}: Flow sequence .* at line 3, column 1`));
  });

  it("--resume where nothing was run", async () => {
    const dir = join(scratch, "runs", "never");
    expectCleanFailure(await cli(["--resume", "--out", dir]), `optune: nothing to resume: ${join(dir, "config.json")} does not exist`);
  });

  it("a bad flag value", async () => {
    expectCleanFailure(await cli(["--iterations", "0", "--out", join(scratch, "runs", "flag")]), "loop.iterations: must be an integer in [1, 10000], got 0");
  });

  it("a bad line in the prompt file, named by file and line", async () => {
    const prompts = write("prompts.jsonl", '{"prompt": "Hello"}\n{"prompt": "The quick brown fox"\n');
    const config = userConfig("prompts", { reward: [{ type: "module", path: goodModule }], prompts });
    expectCleanFailure(await cli(["--config", config]), `${prompts}:2: not valid JSON`);
  });

  it("a tokenizer file that is not JSON", async () => {
    const model = join(scratch, "broken-tokenizer");
    cpSync(join(FIXTURES, "smollm"), model, { recursive: true });
    writeFileSync(join(model, "tokenizer_config.json"), '{"eos_token": ');
    const config = userConfig("tokenizer", { reward: [{ type: "module", path: goodModule }], policy: model });
    expectCleanFailure(await cli(["--config", config]), `${join(model, "tokenizer_config.json")} is not valid JSON`);
  });

  it.each([
    ["throws", "throw new Error('judge offline');", "score() threw: judge offline"],
    ["returns NaN", "return batch.responses.map((_, i) => (i === 1 ? NaN : 0));", "score() returned NaN for item 1; every reward must be a finite number"],
    ["returns the wrong length", "return [0];", /score\(\) returned 1 rewards for \d+ responses/],
  ])("a reward module that %s; the saved iteration 0 resumes once it is fixed", async (name, body, message) => {
    const path = badModule(`reward-${name.replace(/ /g, "-")}`, body);
    const dir = join(scratch, "runs", `module-${name.replace(/ /g, "-")}`);
    const config = userConfig(`module-${name.replace(/ /g, "-")}`, { reward: [{ type: "module", path }] });
    const run = await cli(["--config", config]);
    expectCleanFailure(run, typeof message === "string" ? `optune: reward module ${path}: ${message}` : message);
    expect(savedIteration(dir)).toBe(0);
    if (name !== "throws") return;
    // Nothing done is lost: with the module fixed, --resume goes on from iteration 0 (in a new process, as a user
    // would: this one has the old module cached).
    writeFileSync(path, "export function score(batch) { return batch.responses.map(() => 1); }\n");
    const resumed = await optuneProcess(["run", "--resume", "--out", dir]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(readMetrics(join(dir, "metrics.jsonl")).map((m) => m.iteration)).toEqual([0, 1, 2]);
  });

  it("--resume with a config file", async () => {
    const config = userConfig("resume-flags", { reward: [{ type: "module", path: goodModule }] });
    const dir = join(scratch, "runs", "resume-flags");
    // The CLI refuses before reading the saved config, so an empty one stands in for a run.
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "config.json"), "{}");
    expectCleanFailure(await cli(["--resume", "--config", config, "--out", dir]), "only --iterations may change (got --config)");
  });
});

// --- resuming under another config, non-finite steps (built-in task, tiny) -----------------------------------

function tinyConfig(name: string, overrides: ConfigInput = {}): Config {
  return loadConfig({
    seed: 7,
    ...TINY_TASK,
    optim: { lr: 1e-3 },
    ...overrides,
    run: { dir: join(scratch, "runs", name), cacheDir, ...overrides.run },
  });
}

async function run(config: Config, options: { resume?: boolean; onIteration?: (iteration: number) => void } = {}) {
  const task = await createBuiltinTask(config);
  return runLoop({ config, task, resume: options.resume, onIteration: (m) => options.onIteration?.(m.iteration) });
}

/**
 * Makes the policy diverge during each training step while `poisoned()` is true: its weights are scaled by 1e30
 * for the step, so the real engine computes a NaN gradient and refuses the step, and are put back afterwards
 * (sampling from such weights fails too, and the loop must still evaluate).
 */
function divergeWhen(poisoned: () => boolean): { refused: () => number } {
  const original = EngineModel.prototype.trainStep;
  let refused = 0;
  vi.spyOn(EngineModel.prototype, "trainStep").mockImplementation(async function (this: EngineModel, options: TrainStepOptions) {
    if (!poisoned()) return original.call(this, options);
    const params = await this.getParams();
    await this.setParams(params.map((v) => v * 1e30));
    try {
      return await original.call(this, options);
    } catch (err) {
      refused += 1;
      throw err;
    } finally {
      await this.setParams(params);
    }
  });
  return { refused: () => refused };
}

describe("resume under a different config", () => {
  it("is refused, naming each differing field; iterations, checkpointEvery and skipNonFinite may change", async () => {
    const config = tinyConfig("resume-config", { loop: { iterations: 1, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, tieThreshold: 0 } });
    await run(config);
    const other = tinyConfig("resume-config", { seed: 8, loop: { ...config.loop, prompts: 12 }, loss: { beta: 0.5 } });
    const refused = run(other, { resume: true });
    await expect(refused).rejects.toThrow(`cannot resume ${config.run.dir}: it was run with a different config`);
    await expect(refused).rejects.toThrow(/loop\.prompts \(16 -> 12\)\n {2}loss\.beta \(1 -> 0\.5\)\n {2}seed \(7 -> 8\)\n/);
    await expect(refused).rejects.toThrow(/start a new run: another --out directory, or --overwrite to replace this one$/);
    expect(savedIteration(config.run.dir)).toBe(1);

    const extended = tinyConfig("resume-config", {
      loop: { ...config.loop, iterations: 2 },
      optim: { lr: 1e-3, skipNonFinite: true },
      run: { checkpointEvery: 2 },
    });
    const result = await run(extended, { resume: true });
    expect(result.metrics.map((m) => m.iteration)).toEqual([0, 1, 2]);
  });
});

describe("a run directory changed by something else", () => {
  it("is refused with the file at fault and how to start over", async () => {
    const config = tinyConfig("tampered", { loop: { iterations: 1, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, tieThreshold: 0 } });
    await run(config);
    const latest = join(config.run.dir, "state", "latest.json");
    writeFileSync(latest, '{"iteration": 1, "dir": ');
    await expect(run(config, { resume: true })).rejects.toThrow(
      `${latest}: cannot read the saved run (Unexpected end of JSON input); optune writes it atomically, so it was changed by something else. Start a new run (--overwrite, or another --out directory)`,
    );
  });
});

describe("run directories that are not what a flag assumes", () => {
  const runs = join(scratch, "runs");
  const metricsLines = (dir: string) => readFileSync(join(dir, "metrics.jsonl"), "utf8");

  it("never writes into or deletes a folder optune did not write, even with --overwrite", async () => {
    const project = join(scratch, "project");
    mkdirSync(join(project, "src"), { recursive: true });
    writeFileSync(join(project, "src", "main.py"), "print('mine')\n");
    const config = userConfig("foreign", { reward: [{ type: "module", path: goodModule }] });
    for (const flags of [[], ["--overwrite"]]) {
      expectCleanFailure(
        await cli(["--config", config, "--out", project, ...flags]),
        `optune: ${project} is not an optune run directory (it holds src, which optune does not write)`,
      );
    }
    expect(readFileSync(join(project, "src", "main.py"), "utf8")).toBe("print('mine')\n");
    const file = write("not-a-dir", "x");
    expectCleanFailure(await cli(["--config", config, "--out", file]), `optune: run directory ${file} is a file, not a directory`);
    const below = join(file, "sub");
    expectCleanFailure(await cli(["--config", config, "--out", below]), `optune: cannot create run directory ${below} (ENOTDIR`);
  });

  it("--overwrite refuses to delete what the new run reads (here its own config file)", async () => {
    const dir = join(runs, "reread");
    expect(await cli(["--config", userConfig("reread", { reward: [{ type: "module", path: goodModule }] }), "--iterations", "1"])).toMatchObject({ code: 0 });
    const before = metricsLines(dir);
    expectCleanFailure(
      await cli(["--config", join(dir, "config.json"), "--overwrite"]),
      `optune: --overwrite would delete ${join(dir, "config.json")}, which this run reads, with ${dir}`,
    );
    expect(metricsLines(dir)).toBe(before);
  });

  it("--resume continues the run in --out even when it was copied or moved there", async () => {
    const original = join(runs, "original");
    const config = userConfig("original", { reward: [{ type: "module", path: goodModule }] });
    expect(await cli(["--config", config, "--iterations", "1"])).toMatchObject({ code: 0 });
    const copy = join(runs, "copy");
    cpSync(original, copy, { recursive: true });
    expect(await cli(["--resume", "--out", copy, "--iterations", "2"])).toMatchObject({ code: 0 });
    expect(savedIteration(copy)).toBe(2);
    expect(savedIteration(original)).toBe(1);
    expect(readMetrics(join(original, "metrics.jsonl")).map((m) => m.iteration)).toEqual([0, 1]);
  });

  it("a state pointer or state file of another shape is refused and deletes nothing", async () => {
    const dir = join(runs, "copy"); // from the test above: iterations 0-2, state in state/iter-0002
    const latest = join(dir, "state", "latest.json");
    const saved = join(dir, "state", "iter-0002", "state.json");
    const good = { latest: readFileSync(latest, "utf8"), state: readFileSync(saved, "utf8"), metrics: metricsLines(dir) };
    writeFileSync(latest, "{}");
    expectCleanFailure(await cli(["--resume", "--out", dir]), `optune: ${latest}: not a saved run state (iteration: `);
    writeFileSync(latest, '{"iteration": 1, "dir": "iter-0001"}');
    expectCleanFailure(await cli(["--resume", "--out", dir]), `optune: ${latest} points at ${join(dir, "state", "iter-0001", "state.json")}, which does not exist`);
    writeFileSync(latest, good.latest);
    writeFileSync(saved, good.state.replace(/"iteration": ?2,/, '"iteration": "two",'));
    expectCleanFailure(await cli(["--resume", "--out", dir]), `optune: ${saved}: not a saved run state (iteration: `);
    expect(existsSync(saved)).toBe(true);
    expect(metricsLines(dir)).toBe(good.metrics);
  });

  it("a run that fails to start leaves nothing behind, so the retry needs no flag", async () => {
    const broken = write("broken-module.mjs", "export function score(batch) { return batch.responses.map(() => 0) \n");
    const config = userConfig("failed-start", { reward: [{ type: "module", path: broken }] });
    expectCleanFailure(await cli(["--config", config]), broken);
    expect(existsSync(join(runs, "failed-start"))).toBe(false);
    writeFileSync(broken, "export function score(batch) { return batch.responses.map(() => 0); }\n");
    expect(await cli(["--config", config, "--iterations", "1"])).toMatchObject({ code: 0 });
  });

  it("a reward model that cannot score the chat prompts is refused before the run starts", async () => {
    const chats = write(
      "chats.jsonl",
      ["hi", "hello", "hey", "yo", "howdy", "greetings"].map((t) => JSON.stringify({ messages: [{ role: "user", content: t }] })).join("\n"),
    );
    const config = userConfig("no-template", { reward: [{ type: "model", path: join(FIXTURES, "reward_gpt2") }], prompts: chats });
    expectCleanFailure(await cli(["--config", config]), /reward_gpt2 has no chat template, so it cannot score a chat prompt/);
    expect(existsSync(join(runs, "no-template"))).toBe(false);
  });

  it("a training state that does not fit is refused before the run evaluates or samples anything", async () => {
    const policy = await EngineModel.load(join(FIXTURES, "smollm"));
    const n = policy.numParams;
    await policy.dispose();
    // Room for the weights of each model (2x the policy's), not for the 3x of gradients and AdamW moments.
    vi.stubEnv("OPTUNE_MEMORY_LIMIT", String(n * 4 * 2));
    try {
      const config = userConfig("no-memory", { reward: [{ type: "module", path: goodModule }] });
      expectCleanFailure(
        await cli(["--config", config]),
        `optune: training state (gradients and AdamW moments of ${n} parameters): 0.00 GiB of memory needed, but only 0.00 GiB is available; train a smaller model`,
      );
      expect(existsSync(join(runs, "no-memory"))).toBe(false);
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it("an empty config file still takes the flags", () => {
    const empty = write("empty.yaml", "# nothing set yet\n");
    expect(readConfigFile(empty)).toEqual({});
    expect(readConfigFile(write("null.json", "null"))).toEqual({});
    expect(readConfigFile(write("bom.json", '\uFEFF{"seed": 4}'))).toEqual({ seed: 4 });
  });

  it("a reward module that calls process.exit(0) does not pass for success", async () => {
    const exiting = badModule("exiting", "process.exit(0);");
    const run = await optuneProcess(["run", "--config", userConfig("exiting", { reward: [{ type: "module", path: exiting }] })]);
    expectCleanFailure(run, "optune: the process was told to exit before the command finished");
    expect(savedIteration(join(runs, "exiting"))).toBe(0);
  });
});

describe("the built-in task's inputs", () => {
  it("a policy of another vocabulary is refused before the run directory is written", async () => {
    const config = tinyConfig("other-vocab", { model: { policy: join(FIXTURES, "smollm") } });
    await expect(run(config)).rejects.toThrow(
      new RegExp(`^${join(FIXTURES, "smollm")}: a vocabulary of \\d+ tokens, but the builtin task's tokenizer has \\d+: `),
    );
    expect(existsSync(config.run.dir)).toBe(false);
  });

  it("a metrics line changed by something else is named with its line number", async () => {
    const config = tinyConfig("metrics-line", { loop: { iterations: 1, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, tieThreshold: 0 } });
    await run(config);
    const metrics = join(config.run.dir, "metrics.jsonl");
    writeFileSync(metrics, readFileSync(metrics, "utf8") + "garbage\n");
    await expect(run(config, { resume: true })).rejects.toThrow(`${metrics}:3: not a metrics record (`);
  });

  it("demo prepare refuses a user task's config", async () => {
    const config = userConfig("demo-user", { reward: [{ type: "module", path: goodModule }] });
    const errors: string[] = [];
    const error = vi.spyOn(console, "error").mockImplementation((...parts) => void errors.push(parts.join(" ")));
    const code = await main(["node", "optune", "demo", "prepare", "--config", config]);
    error.mockRestore();
    expectCleanFailure({ code, stderr: errors.join("\n") }, `optune: ${config}: task 'user' has nothing to prepare`);
  });
});

describe("a non-finite gradient", () => {
  it("stops the run with the engine's message, keeping the last completed iteration; resumable with skipNonFinite", async () => {
    const config = tinyConfig("nonfinite-stop");
    await createBuiltinTask(config); // prepared before the engine is made to diverge
    let iteration = 0;
    const divergence = divergeWhen(() => iteration >= 1);
    await expect(run(config, { onIteration: (t) => (iteration = t) })).rejects.toThrow(
      new RegExp(
        "^iteration 2/2, training step 1/\\d+: non-finite gradient \\(norm (inf|nan|-nan)\\): the step was not applied and the weights " +
          `are unchanged; .*\\. The run stopped; iteration 1 is saved in ${config.run.dir}\\. To skip such steps instead, set ` +
          "optim\\.skipNonFinite: true",
      ),
    );
    expect(divergence.refused()).toBe(1);
    expect(savedIteration(config.run.dir)).toBe(1);
    expect(readMetrics(join(config.run.dir, "metrics.jsonl")).map((m) => m.iteration)).toEqual([0, 1]);
    expect(existsSync(join(config.run.dir, "checkpoints", "iter-0001"))).toBe(true);
    expect(existsSync(join(config.run.dir, "checkpoints", "iter-0002"))).toBe(false);
    expect(existsSync(join(config.run.dir, "checkpoints", "final"))).toBe(false);

    // The fix the message names: the same run, resumed with skipNonFinite, finishes.
    const resumed = await run({ ...config, optim: { ...config.optim, skipNonFinite: true } }, { resume: true });
    expect(resumed.status).toBe("completed");
    const last = resumed.metrics[2]!.train as { steps: number; skippedSteps: number; loss: number | null };
    expect(last.steps).toBe(0);
    expect(last.skippedSteps).toBeGreaterThan(0);
  });

  it("with optim.skipNonFinite, skips the refused minibatches, counts them and goes on", async () => {
    const config = tinyConfig("nonfinite-skip", { optim: { lr: 1e-3, skipNonFinite: true } });
    await createBuiltinTask(config);
    let iteration = 0;
    const divergence = divergeWhen(() => iteration === 1);
    const result = await run(config, { onIteration: (t) => (iteration = t) });
    expect(result.status).toBe("completed");
    const train = result.metrics.map((m) => m.train as { steps: number; skippedSteps: number });
    expect(train.map((t) => t.skippedSteps)).toEqual([0, 0, divergence.refused()]);
    expect(train[2]!.steps).toBe(0);
    expect(train[1]!.steps).toBeGreaterThan(0);
    expect(readMetrics(join(config.run.dir, "metrics.jsonl"))[2]!.train).toMatchObject({ skippedSteps: train[2]!.skippedSteps, loss: null });
  });

  it("from weights set to huge values: every step refused, weights unchanged; stops or skips as configured", async () => {
    const config = tinyConfig("nonfinite-params", { loop: { iterations: 1, prompts: 16, k: 3, rho: 0.5, batchPairs: 4, tieThreshold: 0 } });
    await run(config); // for a pool of pairs with cached reference log-probs
    const task = await createBuiltinTask(config);
    const pool = loadRunState(config.run.dir)!.state.pool;
    const promptIds = new Map(task.trainPrompts.map((p) => [p.id, p.ids] as const));
    const policy = await EngineModel.load(task.policyDir);
    const huge = (await policy.getParams()).map((v) => v * 1e30);
    await policy.setParams(huge);
    const settings = { loss: config.loss, optimizer: { lr: 1e-3 }, batchPairs: 4, epochs: 1 };

    await expect(trainOnPool(policy, pool, promptIds, settings, new Rng(1))).rejects.toThrow(/^training step 1\/\d+: non-finite gradient/);
    const skipped = await trainOnPool(policy, pool, promptIds, { ...settings, skipNonFinite: true }, new Rng(1));
    expect(skipped.steps).toBe(0);
    expect(skipped.skippedSteps).toBeGreaterThan(0);
    expect(Number.isNaN(skipped.loss)).toBe(true);
    expect(Buffer.from((await policy.getParams()).buffer).equals(Buffer.from(huge.buffer))).toBe(true);
    await policy.dispose();
  });
});
