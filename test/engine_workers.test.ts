// Engine calls and Node's threads. Calls in flight must not hold libuv's thread pool (4 threads), or file reads,
// DNS lookups (an HTTP reward's) and the like stall until the engine gets to them.
// The engine in worker threads: a worker that ends (process.exit in the worker, or terminate() from outside) while
// one of its engine calls is in flight must not take the process down. Two failures were seen before: the call's
// Promise settled into a dying environment (abort, exit 134), and the addon, unloaded with the last environment
// that loaded it, left the engine thread and OpenMP's threads waiting in unmapped code (segfault, exit 139).
// Each case runs in its own process so that a crash is observed, not suffered.
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

import { beforeAll, describe, expect, it } from "vitest";

import { EngineModel } from "../src/engine/index.js";

const ROOT = resolve(import.meta.dirname, "..");
const ENGINE = pathToFileURL(join(ROOT, "dist", "engine", "index.js")).href;

beforeAll(() => {
  // The child processes import the compiled engine wrapper.
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (tsc.status !== 0) throw new Error(`tsc failed:\n${tsc.stdout}${tsc.stderr}`);
}, 120_000);

/** A main thread that starts a worker sampling for ~1 s, ends it with `end` mid-call, then samples itself. */
function script(end: "exit" | "terminate"): string {
  const worker = `
    import { EngineModel } from ${JSON.stringify(ENGINE)};
    import { parentPort } from "node:worker_threads";
    const m = await EngineModel.create({ arch: "gpt2", vocabSize: 500, dModel: 128, nLayer: 4, nHead: 4, dFf: 512, maxPositions: 512 }, 0);
    const call = m.sample({ prompts: [[1, 2]], nSamples: 32, maxNewTokens: 300 });
    parentPort.postMessage("started");
    ${end === "exit" ? "setTimeout(() => process.exit(3), 50);" : ""}
    await call;`;
  return `
    import { Worker } from "node:worker_threads";
    for (let i = 0; i < 3; i++) {
      const w = new Worker(new URL("data:text/javascript," + encodeURIComponent(${JSON.stringify(worker)})));
      await new Promise((done) => w.once("message", done));
      const exited = new Promise((done) => w.once("exit", done));
      ${end === "terminate" ? "await new Promise((done) => setTimeout(done, 30 + 20 * i)); await w.terminate();" : ""}
      const code = await exited;
      console.log("worker exit " + code);
    }
    await new Promise((done) => setTimeout(done, 1500)); // the abandoned calls finish meanwhile
    const { EngineModel } = await import(${JSON.stringify(ENGINE)});
    const m = await EngineModel.create({ arch: "gpt2", vocabSize: 50, dModel: 16, nLayer: 2, nHead: 2, dFf: 64, maxPositions: 64 }, 0);
    const r = await m.sample({ prompts: [[1]], maxNewTokens: 5 });
    console.log("main sampled " + r.tokens.length);`;
}

function runScript(end: "exit" | "terminate") {
  return spawnSync(process.execPath, ["--input-type=module", "-e", script(end)], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 120_000,
    env: { ...process.env, OMP_NUM_THREADS: "2" },
  });
}

describe("engine calls in worker threads", () => {
  it("survive a worker that calls process.exit mid-call", () => {
    const r = runScript("exit");
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split("\n")).toEqual(["worker exit 3", "worker exit 3", "worker exit 3", "main sampled 5"]);
  });

  it("survive a worker terminated mid-call", () => {
    const r = runScript("terminate");
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split("\n")).toEqual(["worker exit 1", "worker exit 1", "worker exit 1", "main sampled 5"]);
  });
});

describe("engine calls in flight", () => {
  it("leave libuv's thread pool free: a file read finishes before the first of six long calls", async () => {
    const config = { arch: "gpt2" as const, vocabSize: 500, dModel: 128, nLayer: 4, nHead: 4, dFf: 512, maxPositions: 512 };
    const models = await Promise.all(Array.from({ length: 6 }, (_, i) => EngineModel.create(config, i)));
    const events: string[] = [];
    const calls = models.map((m, i) =>
      m.sample({ prompts: [[1, 2]], nSamples: 32, maxNewTokens: 300 }).then(() => void events.push(`call ${i}`)),
    );
    // Six calls wait for the one engine thread; before, each held a pool thread meanwhile, and this read queued
    // behind them until two had finished. Each call is long (~0.1-0.3 s alone on 2 cores; 8 x 100 tokens once lost
    // to a read slowed by a busy CI machine), so only a blocked pool can make the read come after the first.
    await readFile(join(ROOT, "package.json")).then(() => void events.push("read"));
    await Promise.all(calls);
    expect(events[0]).toBe("read");
    expect(events).toHaveLength(7);
    await Promise.all(models.map((m) => m.dispose()));
  });
});
