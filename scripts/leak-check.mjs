// Leak check of the native addon through the TS wrapper (dist/engine; run `npx tsc -p tsconfig.json` first).
// One iteration creates, clones, trains, samples, saves, loads and disposes models, and makes every call that must
// fail on bad input (out-of-range token, NaN weights, overflowing weights, bad checkpoint directory, disposed
// model) fail with its message. Two ways to tell a leak, both comparing a run with its double so Node's own constant noise cancels:
//
//   node scripts/leak-check.mjs [--iterations N]
//     RSS: N warm-up iterations, then two windows of N more; leak when RSS grows by more than 64 KiB per iteration
//     after GC in both windows (a one-time step, e.g. a worker thread's first native call, shows in one only).
//     Catches leaks of model-sized buffers (each model here is ~1 MiB with gradients and AdamW state) and buffers
//     kept alive by mistake, which valgrind calls "still reachable". Blind to small leaks (a string per error).
//   node scripts/leak-check.mjs --valgrind [--iterations N]
//     Runs N and 2N iterations under valgrind --leak-check=full and compares "definitely" + "indirectly lost"
//     bytes. Node itself loses a constant ~1 KiB at exit and reports "possibly lost" blocks of its own, so absolute
//     numbers are not used: any growth between N and 2N iterations is a leak, however small. Slow (~50x).
//     The addon must be built without -march=native (valgrind lacks AVX-512): OPTUNE_NATIVE_ARCH=OFF.
//
// OPTUNE_ADDON selects the addon (default build/Release/optune.node). Last line: "N passed, N failed".
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? Number(args[i + 1]) : def;
};

// ---- one iteration ----------------------------------------------------------------------------------------------

const { EngineModel } = await import(join(root, "dist", "engine", "index.js"));

const config = { arch: "gpt2", vocabSize: 512, dModel: 64, nLayer: 2, nHead: 4, dFf: 128, maxPositions: 32 };
const batch = {
  tokens: Int32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
  offsets: Int32Array.of(0, 5, 10),
  promptLens: Int32Array.of(2, 2),
};

// The promise must reject with a message that contains `needle`; anything else is a failure of the check itself.
async function rejects(promise, needle, what) {
  try {
    await promise;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (!msg.includes(needle)) throw new Error(`${what}: message "${msg}" lacks "${needle}"`);
    return;
  }
  throw new Error(`${what}: expected an error containing "${needle}"`);
}

async function iteration(i, dir) {
  const m = await EngineModel.create(config, i);
  const ref = await m.clone();
  await m.logprobs(batch);
  await m.trainStep({ loss: "dpo", batch, chosen: [0], rejected: [1], refModel: ref, optimizer: { lr: 1e-3 } });
  await m.trainStep({ loss: "sft", batch });
  await m.sample({ prompts: [[1, 2], [3]], nSamples: 2, maxNewTokens: 4, topK: 8, topP: 0.9, seed: i });
  await m.save(dir);
  await m.saveOptimizerState(dir);
  const loaded = await EngineModel.load(dir);
  await loaded.loadOptimizerState(dir);
  await loaded.logprobs(batch);

  // Calls that must fail cleanly.
  const bad = { ...batch, tokens: Int32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 100000) };
  await rejects(m.logprobs(bad), "outside the vocabulary", "out-of-range token");
  const params = await loaded.getParams();
  params[7] = Number.NaN;
  await rejects(loaded.setParams(params), "all values must be finite", "NaN weights, setParams");
  params[7] = 0;
  await loaded.setParams(params.map((v) => v * 1e30)); // finite, but the forward overflows
  await rejects(loaded.trainStep({ loss: "sft", batch }), "non-finite gradient", "huge weights, train step");
  await rejects(EngineModel.load(join(dir, "missing")), "not a directory", "missing checkpoint");
  await rejects(EngineModel.load(join(dir, "corrupt")), "safetensors", "corrupt checkpoint");
  await m.dispose();
  await rejects(m.logprobs(batch), "disposed", "disposed model (wrapper)");
  // The native object itself, behind the wrapper's check: the addon must refuse too.
  await rejects(Promise.resolve().then(() => m["native"].logprobs(batch)), "disposed", "disposed model (native)");

  // LoRA: adapters, their base view, a merged save with PEFT files, and the adapter loads that must fail.
  const lora = await EngineModel.create(config, i);
  await lora.enableLora({ rank: 2, alpha: 4, targets: ["all-linear"], seed: i });
  await lora.base().logprobs(batch);
  await lora.trainStep({ loss: "sft", batch });
  await lora.save(join(dir, "lora"));
  await lora.saveLoraAdapter(join(dir, "lora-adapter"));
  await lora.loadLoraAdapter(join(dir, "lora-adapter"));
  await rejects(lora.loadLoraAdapter(join(dir, "missing")), "not found", "missing adapter");
  await rejects(lora.enableLora({ rank: 2, alpha: 4, targets: ["nothing"] }), "adapters already", "second enableLora");
  await rejects(ref.enableLora({ rank: 2, alpha: 4, targets: ["nothing"] }), "matches no linear layer", "bad target");
  await lora.dispose();

  await ref.dispose();
  await loaded.dispose();
  // Dropped without dispose(): freed by the addon's finalizer when V8 collects it.
  await EngineModel.create(config, i + 1);
}

async function worker(iterations, dir) {
  for (let i = 0; i < iterations; i++) await iteration(i, dir);
}

function makeDir() {
  const dir = mkdtempSync(join(tmpdir(), "optune-leak-"));
  // A directory whose model.safetensors is garbage, for the "corrupt checkpoint" case.
  const corrupt = join(dir, "corrupt");
  spawnSync("mkdir", ["-p", corrupt]);
  writeFileSync(
    join(corrupt, "config.json"),
    JSON.stringify({ model_type: "gpt2", vocab_size: 512, n_embd: 64, n_layer: 2, n_head: 4, n_positions: 32 }),
  );
  writeFileSync(join(corrupt, "model.safetensors"), Buffer.from("\x10\0\0\0\0\0\0\0{not json at all"));
  return dir;
}

// ---- drivers ----------------------------------------------------------------------------------------------------

function gc() {
  // Several passes: finalizers of dropped models run after the collection that finds them.
  for (let k = 0; k < 4; k++) globalThis.gc();
}

async function rssMode(iterations) {
  if (typeof globalThis.gc !== "function") {
    // Re-run with --expose-gc so the measurement is not at the mercy of V8's heap growth.
    const r = spawnSync(process.execPath, ["--expose-gc", fileURLToPath(import.meta.url), ...args], {
      stdio: "inherit",
    });
    process.exit(r.status ?? 1);
  }
  const dir = makeDir();
  const settle = async () => {
    gc();
    await new Promise((r) => setTimeout(r, 50));
    gc();
    return process.memoryUsage().rss;
  };
  try {
    const t0 = Date.now();
    await worker(iterations, dir);
    // Two measured windows after the warm-up: a leak grows RSS in both; a one-time step (a binding worker thread
    // that runs native code for the first time gets its OpenMP team and BLAS buffers, ~13 MiB here, and which of
    // the 4 libuv threads runs which call is up to libuv) lands in one window only.
    const rss = [await settle()];
    for (let w = 0; w < 2; w++) {
      await worker(iterations, dir);
      rss.push(await settle());
    }
    const limit = 64 * 1024;
    const perIter = [0, 1].map((w) => (rss[w + 1] - rss[w]) / iterations);
    const ok = Math.min(...perIter) <= limit;
    const mib = (b) => (b / 2 ** 20).toFixed(1);
    console.log(
      `leak-check (rss): ${3 * iterations} iterations in ${((Date.now() - t0) / 1000).toFixed(1)}s; RSS ` +
        `${mib(rss[0])} / ${mib(rss[1])} / ${mib(rss[2])} MiB after ${iterations} / ${2 * iterations} / ` +
        `${3 * iterations}: ${perIter.map((p) => (p / 1024).toFixed(1)).join(" and ")} KiB per iteration in the ` +
        `two windows (a leak exceeds ${limit / 1024} KiB in both)` +
        (ok ? "" : " -- LEAK"),
    );
    console.log(`${ok ? 1 : 0} passed, ${ok ? 0 : 1} failed`);
    process.exitCode = ok ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Bytes valgrind reports as definitely + indirectly lost for a worker run of `iterations`.
function valgrindRun(iterations) {
  const r = spawnSync(
    "valgrind",
    ["--leak-check=full", "--show-leak-kinds=definite,indirect", "--num-callers=30", process.execPath,
     "--expose-gc", fileURLToPath(import.meta.url), "--worker", "--iterations", String(iterations)],
    { cwd: root, encoding: "utf8", maxBuffer: 256 << 20 },
  );
  const out = (r.stdout ?? "") + (r.stderr ?? "");
  const num = (kind) => {
    const m = out.match(new RegExp(`${kind} lost: ([\\d,]+) bytes`));
    return m ? Number(m[1].replaceAll(",", "")) : null;
  };
  const definite = num("definitely");
  const indirect = num("indirectly");
  if (r.status !== 0 || definite === null || indirect === null) {
    console.error(out.slice(-4000));
    throw new Error(`valgrind run of ${iterations} iterations failed (exit ${r.status})`);
  }
  // Memory errors (invalid reads/writes, uninitialised values) whose stack passes through the addon. V8's
  // conservative stack scan reports uninitialised reads of its own in every run; those never name optune.
  const blocks = out.split(/==\d+== \n/);
  const addonErrors = blocks.filter(
    (b) => /(Invalid (read|write|free)|uninitialised|Mismatched free|overlap)/.test(b) && /optune|native\//.test(b),
  );
  return { lost: definite + indirect, addonErrors, out };
}

async function valgrindMode(iterations) {
  const t0 = Date.now();
  let ok = false;
  try {
    const a = valgrindRun(iterations);
    const b = valgrindRun(2 * iterations);
    const errors = [...a.addonErrors, ...b.addonErrors];
    ok = b.lost <= a.lost && errors.length === 0;
    console.log(
      `leak-check (valgrind): definitely+indirectly lost ${a.lost} bytes after ${iterations} iterations, ` +
        `${b.lost} after ${2 * iterations}; ${errors.length} memory errors in the addon ` +
        `(${((Date.now() - t0) / 1000).toFixed(0)}s)` + (ok ? "" : " -- FAILED"),
    );
    for (const e of errors.slice(0, 5)) console.log(e);
    if (!ok) {
      // The loss records of the longer run name the allocation sites.
      const records = b.out.split("\n").filter((l) => /^==\d+== /.test(l));
      const start = records.findIndex((l) => /are definitely lost|are indirectly lost/.test(l));
      console.log(records.slice(Math.max(0, start), start + 200).join("\n"));
    }
  } catch (err) {
    console.error(`leak-check (valgrind): ${err instanceof Error ? err.message : err}`);
  }
  console.log(`${ok ? 1 : 0} passed, ${ok ? 0 : 1} failed`);
  process.exitCode = ok ? 0 : 1;
}

if (flag("--worker")) {
  const dir = makeDir();
  try {
    await worker(option("--iterations", 10), dir);
    // Collect everything the iterations dropped and let the weak callbacks run: Node frees the small record behind
    // each napi External (40 bytes per model wrapper) only then, and never at exit, where it would read as lost.
    gc();
    await new Promise((r) => setTimeout(r, 100));
    gc();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
} else if (flag("--valgrind")) {
  await valgrindMode(option("--iterations", 5));
} else {
  await rssMode(option("--iterations", 100));
}
