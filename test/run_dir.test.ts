// What a run directory holds (src/loop/run_dir.ts) and how flags lay over a config file's sections
// (src/cli/config_file.ts): the cases that decide whether optune may write into, or replace, a folder.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { withOverrides } from "../src/cli/config_file.js";
import { checkReplaceable, clearRunDir, runDirStatus } from "../src/loop/run_dir.js";

const scratch = mkdtempSync(join(tmpdir(), "optune-run-dir-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A folder under scratch holding `files` (paths relative to it; a trailing "/" makes a folder). */
function folder(name: string, files: string[]): string {
  const dir = join(scratch, name);
  mkdirSync(dir, { recursive: true });
  for (const f of files) {
    if (f.endsWith("/")) mkdirSync(join(dir, f), { recursive: true });
    else {
      mkdirSync(join(dir, f, ".."), { recursive: true });
      writeFileSync(join(dir, f), f === "metrics.jsonl" ? '{"iteration":0}\n' : "{}");
    }
  }
  return dir;
}

describe("runDirStatus", () => {
  it("tells free, unstarted, run and foreign folders apart", () => {
    expect(runDirStatus(join(scratch, "missing"))).toEqual({ kind: "free" });
    expect(runDirStatus(folder("empty", []))).toEqual({ kind: "free" });
    expect(runDirStatus(folder("temp-only", [".config.json.123.tmp"]))).toEqual({ kind: "free" });
    expect(runDirStatus(folder("unstarted", ["config.json"]))).toEqual({ kind: "unstarted" });
    expect(runDirStatus(folder("metrics", ["config.json", "metrics.jsonl"]))).toEqual({ kind: "run" });
    expect(runDirStatus(folder("state", ["config.json", "state/latest.json"]))).toEqual({ kind: "run" });
    expect(runDirStatus(folder("checkpoints", ["config.json", "checkpoints/"]))).toEqual({ kind: "run" });
    expect(runDirStatus(folder("project", ["config.json", "src/main.py", "README.md"]))).toEqual({
      kind: "foreign",
      entries: ["README.md", "src"],
    });
    writeFileSync(join(scratch, "a-file"), "x");
    expect(() => runDirStatus(join(scratch, "a-file"))).toThrow(/is a file, not a directory/);
  });

  it("clearRunDir removes only optune's entries, and refuses a foreign folder", () => {
    const run = folder("to-clear", ["config.json", "metrics.jsonl", "state/latest.json", "checkpoints/final/", ".x.1.tmp"]);
    clearRunDir(run);
    expect(readdirSync(run)).toEqual([]);
    const project = folder("not-mine", ["config.json", "notes.txt"]);
    expect(() => clearRunDir(project)).toThrow(/not an optune run directory \(it holds notes\.txt/);
    expect(readdirSync(project).sort()).toEqual(["config.json", "notes.txt"]);
  });

  it("checkReplaceable refuses a folder holding the working directory or a path the run reads", () => {
    const run = folder("replace", ["config.json", "checkpoints/final/config.json"]);
    expect(() => checkReplaceable(run, [join(run, "checkpoints", "final")])).toThrow(
      `--overwrite would delete ${join(run, "checkpoints", "final")}, which this run reads`,
    );
    expect(() => checkReplaceable(run, [join(scratch, "elsewhere")])).not.toThrow();
    expect(() => checkReplaceable(process.cwd(), [])).toThrow(/holds the current directory/);
  });
});

describe("withOverrides", () => {
  it("creates missing and empty sections but leaves a section that is not an object for the schema to report", () => {
    const flags = new Map<string, unknown>([["loop.rho", 0.25]]);
    expect(withOverrides({}, flags)).toEqual({ loop: { rho: 0.25 } });
    expect(withOverrides({ loop: null }, flags)).toEqual({ loop: { rho: 0.25 } });
    expect(withOverrides({ loop: { k: 4 } }, flags)).toEqual({ loop: { k: 4, rho: 0.25 } });
    expect(withOverrides({ loop: 5 }, flags)).toEqual({ loop: 5 });
  });
});
