// The JS-module reward source: what score() receives, the export forms it accepts, and the errors for a
// module that returns the wrong number of rewards, a non-finite reward, throws, or exports nothing usable.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { type ChatRewardPrompt, ModuleRewardSource, type PlainRewardBatch } from "../src/rewards/module.js";
import type { RewardBatch } from "../src/rewards/source.js";

const dir = mkdtempSync(join(tmpdir(), "optune-reward-module-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeModule(name: string, source: string): string {
  const path = join(dir, name);
  writeFileSync(path, source);
  return path;
}

const chat: ChatRewardPrompt = { text: "<user>hi</user>", ids: Int32Array.from([5, 6]), messages: [{ role: "user", content: "hi" }] };
const batch: RewardBatch = {
  prompts: [chat, chat, { text: "2+2=", ids: Int32Array.from([7]) }],
  responses: [
    { text: "hello", ids: Int32Array.from([8, 2]), endedWithEos: true },
    { text: "hello there", ids: Int32Array.from([8, 9]), endedWithEos: false },
    { text: "4", ids: Int32Array.from([10, 2]), endedWithEos: true },
  ],
};

describe("module reward source", () => {
  it("passes a plain batch to a named score export and returns its rewards", async () => {
    const path = writeModule(
      "length.mjs",
      `export let seen;\nexport function score(batch) { seen = batch; return batch.responses.map((r) => r.length); }\n`,
    );
    const source = await ModuleRewardSource.load(path);
    expect(source.name).toBe(`reward module ${path}`);
    expect(await source.score(batch)).toEqual([5, 11, 1]);
    const mod = (await import(path)) as { seen: PlainRewardBatch };
    expect(mod.seen).toEqual({
      prompts: ["<user>hi</user>", "<user>hi</user>", "2+2="],
      responses: ["hello", "hello there", "4"],
      messages: [[{ role: "user", content: "hi" }], [{ role: "user", content: "hi" }], null],
      endedWithEos: [true, false, true],
      promptIds: [[5, 6], [5, 6], [7]],
      responseIds: [[8, 2], [8, 9], [10, 2]],
    });
  });

  it("accepts an async default-export function and a default object with score()", async () => {
    const fn = await ModuleRewardSource.load(writeModule("default_fn.mjs", `export default async (b) => b.prompts.map(() => 1.5);\n`));
    expect(await fn.score(batch)).toEqual([1.5, 1.5, 1.5]);
    const obj = await ModuleRewardSource.load(
      writeModule("default_obj.mjs", `export default { bonus: 2, score(b) { return b.endedWithEos.map((e) => (e ? this.bonus : 0)); } };\n`),
    );
    expect(await obj.score(batch)).toEqual([2, 0, 2]);
  });

  it("rejects a wrong number of rewards, naming the module", async () => {
    const path = writeModule("short.mjs", `export function score(b) { return [1]; }\n`);
    const source = await ModuleRewardSource.load(path);
    await expect(source.score(batch)).rejects.toThrow(`reward module ${path}: score() returned 1 rewards for 3 responses`);
  });

  it("rejects NaN, infinities and non-numbers, naming the module and the item", async () => {
    const nan = writeModule("nan.mjs", `export function score(b) { return [0, NaN, 1]; }\n`);
    await expect((await ModuleRewardSource.load(nan)).score(batch)).rejects.toThrow(
      `reward module ${nan}: score() returned NaN for item 1; every reward must be a finite number`,
    );
    const inf = writeModule("inf.mjs", `export function score(b) { return [0, 1, -Infinity]; }\n`);
    await expect((await ModuleRewardSource.load(inf)).score(batch)).rejects.toThrow(/returned -Infinity for item 2/);
    const str = writeModule("str.mjs", `export function score(b) { return [0, "1", 2]; }\n`);
    await expect((await ModuleRewardSource.load(str)).score(batch)).rejects.toThrow(/returned "1" for item 1/);
    const obj = writeModule("obj.mjs", `export function score(b) { return { rewards: [1, 2, 3] }; }\n`);
    await expect((await ModuleRewardSource.load(obj)).score(batch)).rejects.toThrow(/returned \{"rewards":\[1,2,3\]\} instead of an array of 3 numbers/);
  });

  it("wraps an exception thrown by score(), naming the module", async () => {
    const path = writeModule("throws.mjs", `export async function score() { throw new Error("judge offline"); }\n`);
    const source = await ModuleRewardSource.load(path);
    await expect(source.score(batch)).rejects.toThrow(`reward module ${path}: score() threw: judge offline`);
  });

  it("reports a module without a score function, one that fails to import, and a missing file", async () => {
    const none = writeModule("none.mjs", `export const scorer = () => [];\n`);
    await expect(ModuleRewardSource.load(none)).rejects.toThrow(`reward module ${none} exports no score function`);
    const broken = writeModule("broken.mjs", `export function score( {\n`);
    await expect(ModuleRewardSource.load(broken)).rejects.toThrow(`cannot import reward module ${broken}`);
    await expect(ModuleRewardSource.load(join(dir, "missing.mjs"))).rejects.toThrow(/missing\.mjs does not exist/);
  });
});
