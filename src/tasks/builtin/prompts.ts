// Synthetic instruction-following prompts for the built-in task.
//
// Six families of increasing difficulty for a tiny character-level model:
//   copy: abc          -> abc      (echo the input)
//   first 3: abcdef    -> abc      (length-constrained prefix)
//   reverse: abcd      -> dcba
//   sort: 3142         -> 1234     (digits ascending)
//   count a: banana    -> 3        (occurrences of a letter)
//   add: 23+45         -> 68       (two-digit addition)
// Prompts stay <= 24 characters and answers <= 12, so the whole sequence
// <bos> prompt '=' answer <eos> fits in a short context.

import { Rng } from "../../util/random.js";

export const FAMILIES = ["copy", "first", "reverse", "sort", "count", "add"] as const;
export type Family = (typeof FAMILIES)[number];

export interface Prompt {
  /** Index of the prompt within its split (train and eval are numbered separately). */
  id: number;
  family: Family;
  text: string;
  /** The gold response, without the trailing <eos>. */
  answer: string;
}

export const LETTERS = "abcdefghijklmnopqrstuvwxyz";
export const DIGITS = "0123456789";

/** True for families whose answer is a number (graded by numeric closeness). */
export function isNumericFamily(family: Family): boolean {
  return family === "count" || family === "add";
}

/** The characters a well-formed answer of this family consists of. */
export function answerAlphabet(family: Family): string {
  return family === "copy" || family === "first" || family === "reverse" ? LETTERS : DIGITS;
}

function randomString(rng: Rng, alphabet: string, minLength: number, maxLength: number): string {
  const length = rng.int(minLength, maxLength);
  let s = "";
  for (let i = 0; i < length; i++) s += alphabet[rng.int(0, alphabet.length - 1)];
  return s;
}

/** One random prompt of the given family: its text and gold answer. */
export function generatePrompt(family: Family, rng: Rng): { text: string; answer: string } {
  switch (family) {
    case "copy": {
      const s = randomString(rng, LETTERS, 2, 6);
      return { text: `copy: ${s}`, answer: s };
    }
    case "first": {
      const s = randomString(rng, LETTERS, 4, 8);
      // n >= 2: a one-letter answer would make edit similarity all-or-nothing.
      const n = rng.int(2, Math.min(4, s.length - 1));
      return { text: `first ${n}: ${s}`, answer: s.slice(0, n) };
    }
    case "reverse": {
      const s = randomString(rng, LETTERS, 3, 7);
      return { text: `reverse: ${s}`, answer: [...s].reverse().join("") };
    }
    case "sort": {
      const s = randomString(rng, DIGITS, 3, 7);
      return { text: `sort: ${s}`, answer: [...s].sort().join("") };
    }
    case "count": {
      // Words over three letters, so the target letter appears a few times.
      const letters = rng.sample([...LETTERS], 3).join("");
      const target = letters[0] as string;
      const word = randomString(rng, letters, 4, 8);
      const count = [...word].filter((c) => c === target).length;
      return { text: `count ${target}: ${word}`, answer: String(count) };
    }
    case "add": {
      const a = rng.int(0, 99);
      const b = rng.int(0, 99);
      return { text: `add: ${a}+${b}`, answer: String(a + b) };
    }
  }
}

export interface SplitOptions {
  seed: number;
  trainSize: number;
  evalSize: number;
  /** Families to draw from, in equal shares (round-robin); defaults to all. */
  families?: readonly Family[];
}

export interface PromptSplit {
  train: Prompt[];
  eval: Prompt[];
}

// Upper bound on redraws for one prompt before concluding the family is exhausted.
const MAX_ATTEMPTS = 10_000;

function drawDistinct(
  count: number,
  families: readonly Family[],
  rng: Rng,
  used: Set<string>,
): Prompt[] {
  const prompts: Prompt[] = [];
  for (let id = 0; id < count; id++) {
    const family = families[id % families.length] as Family;
    let attempts = 0;
    for (;;) {
      const { text, answer } = generatePrompt(family, rng);
      if (!used.has(text)) {
        used.add(text);
        prompts.push({ id, family, text, answer });
        break;
      }
      attempts += 1;
      if (attempts >= MAX_ATTEMPTS) {
        throw new RangeError(`cannot draw ${count} distinct prompts from family '${family}'`);
      }
    }
  }
  // Shuffle so families are interleaved at random, then renumber.
  rng.shuffle(prompts);
  return prompts.map((p, i) => ({ ...p, id: i }));
}

/**
 * Deterministic train/eval split with disjoint prompt texts. The eval set is
 * drawn first from its own sub-stream, so it does not change when trainSize
 * changes; train prompts skip every eval text.
 */
export function buildSplit(options: SplitOptions): PromptSplit {
  const families = options.families ?? FAMILIES;
  if (families.length === 0) throw new RangeError("buildSplit needs at least one family");
  for (const [name, size] of [["trainSize", options.trainSize], ["evalSize", options.evalSize]] as const) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`${name} must be a non-negative integer, got ${size}`);
  }
  const root = new Rng(options.seed);
  const used = new Set<string>();
  const evalPrompts = drawDistinct(options.evalSize, families, root.fork(1), used);
  const trainPrompts = drawDistinct(options.trainSize, families, root.fork(2), used);
  return { train: trainPrompts, eval: evalPrompts };
}
