import { describe, expect, it } from "vitest";
import { corruptAnswer, DEMO_ACCURACY, DEMO_CHATTY, FILLERS, makeDemos } from "../src/tasks/builtin/demos.js";
import { editDistance, goldReward } from "../src/tasks/builtin/gold.js";
import { makePreferencePairs } from "../src/tasks/builtin/preference_data.js";
import { answerAlphabet, buildSplit, FAMILIES, type Prompt } from "../src/tasks/builtin/prompts.js";
import {
  BOS_ID,
  decode,
  decodeResponse,
  encode,
  encodePrompt,
  EOS_ID,
  PAD_ID,
  TokenizerError,
  VOCAB_SIZE,
} from "../src/tasks/builtin/tokenizer.js";
import { Rng } from "../src/util/random.js";

const split = buildSplit({ seed: 5, trainSize: 600, evalSize: 120 });
const allPrompts = [...split.train, ...split.eval];

/** Independent solver for each family, parsed back from the prompt text. */
function solve(text: string): string {
  const [head, body] = text.split(": ") as [string, string];
  if (head === "copy") return body;
  if (head === "reverse") return [...body].reverse().join("");
  if (head === "sort") return [...body].sort().join("");
  if (head.startsWith("first ")) return body.slice(0, Number(head.slice(6)));
  if (head.startsWith("count ")) return String([...body].filter((c) => c === head.slice(6)).length);
  if (head === "add") {
    const [a, b] = body.split("+").map(Number) as [number, number];
    return String(a + b);
  }
  throw new Error(`unknown prompt ${text}`);
}

describe("tokenizer", () => {
  it("has a small fixed vocabulary with the special tokens first", () => {
    expect(VOCAB_SIZE).toBeLessThan(64);
    expect([PAD_ID, BOS_ID, EOS_ID]).toEqual([0, 1, 2]);
    expect(Array.from(encode("0a"))).toEqual([3, 13]);
  });

  it("round-trips every prompt and answer", () => {
    for (const p of allPrompts) {
      expect(decode(encode(p.text))).toBe(p.text);
      expect(decode(encode(p.answer))).toBe(p.answer);
    }
    const ids = encode("add: 1+2", { bos: true, eos: true });
    expect(ids[0]).toBe(BOS_ID);
    expect(ids[ids.length - 1]).toBe(EOS_ID);
    expect(decode(ids)).toBe("<bos>add: 1+2<eos>");
    expect(decode(encodePrompt("copy: ab"))).toBe("<bos>copy: ab=");
  });

  it("names the character it cannot encode", () => {
    expect(() => encode("abC")).toThrow(TokenizerError);
    expect(() => encode("abC")).toThrow(/"C" at position 2/);
    expect(() => encode("x\u00e9")).toThrow(/"\u00e9"/);
    expect(() => decode([VOCAB_SIZE])).toThrow(RangeError);
  });

  it("decodes a response up to its first <eos>", () => {
    expect(decodeResponse(Int32Array.from([...encode("dcba"), EOS_ID, ...encode("zz")]))).toEqual({
      text: "dcba",
      endedWithEos: true,
    });
    expect(decodeResponse(Int32Array.from([...encode("ab"), BOS_ID]))).toEqual({ text: "ab#", endedWithEos: false });
  });
});

describe("prompts", () => {
  it("is deterministic from the seed", () => {
    expect(buildSplit({ seed: 5, trainSize: 600, evalSize: 120 })).toEqual(split);
    expect(buildSplit({ seed: 6, trainSize: 600, evalSize: 120 }).train).not.toEqual(split.train);
  });

  it("keeps the eval set fixed when the train size changes", () => {
    expect(buildSplit({ seed: 5, trainSize: 10, evalSize: 120 }).eval).toEqual(split.eval);
  });

  it("has disjoint, distinct texts and ids numbered within each split", () => {
    const trainTexts = new Set(split.train.map((p) => p.text));
    expect(trainTexts.size).toBe(split.train.length);
    expect(new Set(split.eval.map((p) => p.text)).size).toBe(split.eval.length);
    for (const p of split.eval) expect(trainTexts.has(p.text)).toBe(false);
    expect(split.train.map((p) => p.id)).toEqual([...Array(600).keys()]);
    expect(split.eval.map((p) => p.id)).toEqual([...Array(120).keys()]);
  });

  it("has correct answers, short lengths and balanced families", () => {
    for (const p of allPrompts) {
      expect(p.answer).toBe(solve(p.text));
      expect(p.text.length).toBeLessThanOrEqual(24);
      expect(p.answer.length).toBeLessThanOrEqual(12);
      expect(p.answer.length).toBeGreaterThan(0);
    }
    for (const family of FAMILIES) {
      expect(split.train.filter((p) => p.family === family).length).toBe(100);
      expect(split.eval.filter((p) => p.family === family).length).toBe(20);
    }
  });
});

/** The answer with one character replaced by a different one from the family's alphabet. */
function oneCharOff(p: Prompt, rng: Rng): string {
  const alphabet = answerAlphabet(p.family);
  const i = rng.int(0, p.answer.length - 1);
  let c = p.answer[i] as string;
  while (c === p.answer[i]) c = rng.choice([...alphabet]);
  return p.answer.slice(0, i) + c + p.answer.slice(i + 1);
}

function randomString(rng: Rng, length: number): string {
  let s = "";
  for (let i = 0; i < length; i++) s += rng.choice([..."abcdefghijklmnopqrstuvwxyz0123456789 :+"]);
  return s;
}

describe("gold reward", () => {
  it("is 1 exactly on the answer followed by <eos>", () => {
    for (const p of allPrompts) expect(goldReward(p, p.answer, true)).toBe(1);
    const p = split.train[0] as Prompt;
    expect(goldReward(p, p.answer, false)).toBe(0.875);
  });

  it("matches the documented formula on hand-computed cases", () => {
    // Text family: 1 substitution in 4 characters.
    expect(goldReward({ family: "reverse", answer: "dcba" }, "dcbx", true)).toBeCloseTo(0.25 + 0.75 * 0.75, 12);
    // Numeric family: off by one from 68, scale 6.8.
    expect(goldReward({ family: "add", answer: "68" }, "69", true)).toBeCloseTo(0.25 + 0.75 / (1 + 1 / 6.8), 12);
    // Non-integer on a numeric family: half the text similarity; format counts 1 of 2 clean characters.
    expect(goldReward({ family: "count", answer: "3" }, "3a", false)).toBeCloseTo(0.25 * 0.25 + 0.75 * 0.5 * 0.5, 12);
    // Leading zeros are not a canonical integer.
    expect(goldReward({ family: "add", answer: "8" }, "08", true)).toBeLessThan(1);
    expect(goldReward({ family: "copy", answer: "ab" }, "", false)).toBe(0);
  });

  it("grades a one-character mistake between a random string and the answer", () => {
    const rng = new Rng(99);
    for (const p of allPrompts) {
      const near = goldReward(p, oneCharOff(p, rng), true);
      const far = goldReward(p, randomString(rng, 12), true);
      expect(near).toBeLessThan(1);
      expect(near).toBeGreaterThan(far);
      expect(far).toBeGreaterThanOrEqual(0);
    }
  });

  it("stays within [0, 1] on arbitrary responses", () => {
    const rng = new Rng(4);
    for (const p of allPrompts) {
      for (let n = 0; n < 5; n++) {
        const r = goldReward(p, randomString(rng, rng.int(0, 20)), rng.bernoulli(0.5));
        expect(r).toBeGreaterThanOrEqual(0);
        expect(r).toBeLessThanOrEqual(1);
      }
    }
  });

  it("uses the Levenshtein distance", () => {
    expect(editDistance("kitten", "sitting")).toBe(3);
    expect(editDistance("", "abc")).toBe(3);
    expect(editDistance("abc", "abc")).toBe(0);
  });
});

describe("demonstrations", () => {
  const demos = makeDemos(split.train, { seed: 8 });

  it("are correct at about the per-family rate and wrong otherwise", () => {
    for (const family of FAMILIES) {
      const ofFamily = demos.filter((d) => split.train[d.promptId]!.family === family);
      const rate = ofFamily.filter((d) => d.correct).length / ofFamily.length;
      // A demo is exactly right when its answer is right and it is not chatty. 100 demos per family: 4 standard
      // deviations of a binomial proportion is < 0.2.
      expect(Math.abs(rate - DEMO_ACCURACY[family] * (1 - DEMO_CHATTY))).toBeLessThan(0.2);
    }
    const chatty = demos.filter((d) => FILLERS.some((f) => d.response.endsWith(f))).length / demos.length;
    expect(Math.abs(chatty - DEMO_CHATTY)).toBeLessThan(0.1);
    for (const d of demos) {
      const p = split.train[d.promptId]!;
      expect(d.response === p.answer).toBe(d.correct);
      expect(() => encode(d.response)).not.toThrow();
    }
    const meanGold = demos.reduce((s, d) => s + goldReward(split.train[d.promptId]!, d.response, true), 0) / demos.length;
    expect(meanGold).toBeLessThan(0.9);
    expect(meanGold).toBeGreaterThan(0.6);
  });

  it("are deterministic from the seed", () => {
    expect(makeDemos(split.train, { seed: 8 })).toEqual(demos);
    expect(makeDemos(split.train, { seed: 9 })).not.toEqual(demos);
  });

  it("corruptions always differ from the answer", () => {
    const rng = new Rng(1);
    for (const p of allPrompts) {
      expect(corruptAnswer(p, rng)).not.toBe(p.answer);
      expect(corruptAnswer(p, rng, 2)).not.toBe(p.answer);
    }
  });
});

describe("preference data", () => {
  it("has no ties and flips labels at about flipProb", () => {
    const pairs = makePreferencePairs(split.train, { seed: 3, pairsPerPrompt: 4, flipProb: 0.2 });
    expect(pairs.length).toBe(2400);
    let flipped = 0;
    for (const pair of pairs) {
      const p = split.train[pair.promptId]!;
      expect(goldReward(p, pair.chosen.text, pair.chosen.endedWithEos)).toBe(pair.goldChosen);
      expect(goldReward(p, pair.rejected.text, pair.rejected.endedWithEos)).toBe(pair.goldRejected);
      expect(pair.goldChosen).not.toBe(pair.goldRejected);
      expect(pair.goldChosen > pair.goldRejected).toBe(!pair.flipped);
      expect(() => encode(pair.chosen.text)).not.toThrow();
      if (pair.flipped) flipped += 1;
    }
    // Binomial(2400, 0.2): std 0.008.
    expect(Math.abs(flipped / pairs.length - 0.2)).toBeLessThan(0.04);
  });

  it("is noise-free with flipProb 0 and reproducible", () => {
    const a = makePreferencePairs(split.train.slice(0, 50), { seed: 3, flipProb: 0 });
    expect(a.every((pair) => !pair.flipped && pair.goldChosen > pair.goldRejected)).toBe(true);
    expect(makePreferencePairs(split.train.slice(0, 50), { seed: 3, flipProb: 0 })).toEqual(a);
    expect(() => makePreferencePairs(split.train, { seed: 3, flipProb: 1.5 })).toThrow(RangeError);
  });
});
