// How `npm test` (scripts/test.mjs) counts results: native cases from ctest's output, TS tests from vitest's
// JSON report, with crashes and unloadable files counted as failures.

import { describe, expect, it } from "vitest";

import { parseCtest, parseVitestReport } from "../scripts/test.mjs";

interface ExeCount {
  name: string;
  passed: number;
  failed: number;
  note: string;
}

const ctestOutput = [
  "1: Test command: /b/test_a",
  "1: ok   first",
  "1: FAIL second",
  "1:   a.cpp:10: CHECK(x)",
  "1: ok   third",
  "1: 3 cases, 1 failed",
  "1/4 Test #1: test_a ...........................***Failed    0.10 sec",
  "2: ok   only",
  "2: 1 cases, 0 failed",
  "2/4 Test #2: test_b ...........................   Passed    0.01 sec",
  "3: ok   before_crash",
  "3/4 Test #3: test_c ...........................***Exception: SegFault  0.02 sec",
  "4/4 Test #4: test_d ...........................***Failed    0.00 sec",
].join("\n");

describe("npm test counting", () => {
  it("counts native cases per executable, a crash or silent executable as one failure", () => {
    const counts = parseCtest(ctestOutput) as ExeCount[];
    const byName = Object.fromEntries(counts.map((c) => [c.name, [c.passed, c.failed]]));
    expect(byName).toEqual({ test_a: [2, 1], test_b: [1, 0], test_c: [1, 1], test_d: [0, 1] });
  });

  it("counts a non-zero exit after a clean summary as a failure", () => {
    const out = "1: ok   a\n1: 1 cases, 0 failed\n1/1 Test #1: test_x .....***Failed    0.01 sec\n";
    expect((parseCtest(out) as ExeCount[]).map((c) => [c.passed, c.failed])).toEqual([[1, 1]]);
  });

  it("counts vitest tests, and a file that failed to load as one failure", () => {
    const report = {
      testResults: [
        { status: "passed", assertionResults: [{ status: "passed" }, { status: "passed" }, { status: "skipped" }] },
        { status: "failed", assertionResults: [{ status: "passed" }, { status: "failed" }] },
        { status: "failed", assertionResults: [] },
      ],
    };
    expect(parseVitestReport(report)).toEqual({ passed: 3, failed: 2 });
  });
});
