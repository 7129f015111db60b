// README.md is the front door: its complete config and its list of `optune run` flags must stay what the code does.
// (Both had drifted once: five wrong defaults and three missing fields in the config block, two missing flags.)
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { describe, expect, it } from "vitest";
import { parse } from "yaml";

import { generateCommand } from "../src/cli/generate.js";
import { runCommand } from "../src/cli/run.js";
import { loadConfig } from "../src/config/schema.js";

const readme = readFileSync(join(import.meta.dirname, "..", "README.md"), "utf8");

/** The first fenced block of `lang` after the line containing `marker`. */
function blockAfter(marker: string, lang: string): string {
  const at = readme.indexOf(marker);
  expect(at, `README.md has no "${marker}"`).toBeGreaterThanOrEqual(0);
  const open = readme.indexOf("```" + lang + "\n", at);
  const close = readme.indexOf("\n```", open + 4 + lang.length);
  expect(open, `no \`\`\`${lang} block after "${marker}"`).toBeGreaterThan(at);
  return readme.slice(open + 4 + lang.length, close);
}

/** The paragraph (up to a blank line) that starts with `start`. */
function paragraph(start: string): string {
  const at = readme.indexOf("\n" + start);
  expect(at, `README.md has no paragraph starting "${start}"`).toBeGreaterThanOrEqual(0);
  const end = readme.indexOf("\n\n", at + 1);
  return readme.slice(at + 1, end < 0 ? undefined : end);
}

describe("README.md", () => {
  it("gives every field of the complete config with the schema's default", () => {
    const documented = parse(blockAfter("A complete config (every field, with its default", "yaml")) as unknown;
    // loadConfig adds nothing to a config that already names every field: the two are equal exactly
    expect(loadConfig(documented)).toEqual(documented);
    expect(documented).toEqual(loadConfig({}));
  });

  it("names every flag of `optune run`", () => {
    const text = paragraph("Flags:");
    const missing = runCommand()
      .options.map((o) => o.long as string)
      .filter((long) => !["--resume", "--overwrite"].includes(long)) // named in the same paragraph's last sentence
      .filter((long) => !text.includes("`" + long + "`") && !text.includes("/`" + long + "`"));
    expect(missing, "flags of `optune run` missing from README's Flags paragraph").toEqual([]);
    for (const long of ["--resume", "--overwrite"]) expect(text).toContain("`" + long + "`");
  });

  it("names every flag of `optune generate`", () => {
    const text = paragraph("`--prompt TEXT`") + "\n" + readme.slice(readme.indexOf("- `optune generate`:"));
    const missing = generateCommand()
      .options.map((o) => o.long as string)
      .filter((long) => long !== "--model" && !text.includes("`" + long + "`") && !text.includes("`" + long + " "));
    expect(missing, "flags of `optune generate` missing from README").toEqual([]);
  });
});
