// Imperfect SFT demonstrations for pretraining the policy on the built-in task.
//
// Each training prompt gets one demonstration that is the gold answer with a
// per-family probability and otherwise a plausible mistake (a swapped, dropped,
// duplicated or substituted character; an off-by-one or off-by-ten number).
// A policy fitted to these is mediocre but improvable: exactly what the
// preference loop needs to show progress.
//
// Independently of correctness, a share of demonstrations is "chatty": the
// answer is followed by filler (" ok", "..."), as sloppy annotators write.
// The gold reward penalizes it (edit distance and the format term), and it is
// the kind of flaw a small learned reward model can recognise, so preference
// tuning has something real to remove, as in RLHF on verbose SFT models.

import { Rng } from "../../util/random.js";
import { answerAlphabet, isNumericFamily, type Family, type Prompt } from "./prompts.js";

/** Probability that a demonstration is correct; lower for harder families. */
export const DEMO_ACCURACY: Readonly<Record<Family, number>> = {
  copy: 0.85,
  first: 0.7,
  reverse: 0.6,
  sort: 0.55,
  count: 0.5,
  add: 0.4,
};

function swapAdjacent(s: string, i: number): string {
  return s.slice(0, i) + s[i + 1] + s[i] + s.slice(i + 2);
}

function textMistake(s: string, alphabet: string, rng: Rng): string {
  const i = rng.int(0, s.length - 1);
  switch (rng.int(0, 3)) {
    case 0:
      return s.length >= 2 ? swapAdjacent(s, Math.min(i, s.length - 2)) : s;
    case 1:
      return s.length >= 2 ? s.slice(0, i) + s.slice(i + 1) : s;
    case 2:
      return s.slice(0, i + 1) + s.slice(i);
    default: {
      const replacement = alphabet[rng.int(0, alphabet.length - 1)] as string;
      return s.slice(0, i) + replacement + s.slice(i + 1);
    }
  }
}

function numberMistake(s: string, family: Family, rng: Rng): string {
  const value = Number(s);
  switch (rng.int(0, family === "add" ? 3 : 1)) {
    case 0:
      return String(value + 1);
    case 1:
      return String(Math.max(0, value - 1));
    case 2:
      return String(rng.bernoulli(0.5) || value < 10 ? value + 10 : value - 10);
    default:
      // Swapped digits, e.g. 68 -> 86; canonicalized so "08" becomes "8".
      return s.length >= 2 ? String(Number(swapAdjacent(s, rng.int(0, s.length - 2)))) : String(value + 1);
  }
}

/** One plausible mistake applied to `text` (may occasionally return `text` unchanged). */
function mistake(family: Family, text: string, rng: Rng): string {
  if (isNumericFamily(family) && /^[0-9]+$/.test(text)) return numberMistake(text, family, rng);
  if (text.length === 0) return answerAlphabet(family)[rng.int(0, 9)] as string;
  return textMistake(text, answerAlphabet(family), rng);
}

// Bound on retries when a mistake happens to reproduce the answer.
const MAX_TRIES = 100;

/**
 * The prompt's answer with `mistakes` random mistakes applied, guaranteed to
 * differ from the answer.
 */
export function corruptAnswer(prompt: Pick<Prompt, "family" | "answer">, rng: Rng, mistakes = 1): string {
  if (!Number.isInteger(mistakes) || mistakes < 1) {
    throw new RangeError(`mistakes must be a positive integer, got ${mistakes}`);
  }
  for (let attempt = 0; attempt < MAX_TRIES; attempt++) {
    let text = prompt.answer;
    for (let m = 0; m < mistakes; m++) text = mistake(prompt.family, text, rng);
    if (text !== prompt.answer) return text;
  }
  // Unreachable in practice: appending a character always changes the string.
  return prompt.answer + (answerAlphabet(prompt.family)[0] as string);
}

/** Filler a chatty demonstration appends after its answer (all characters are in the task's vocabulary). */
export const FILLERS: readonly string[] = [" ok", " done", "..", " ?", ", ok", " yes"];

/** Probability that a demonstration is chatty (answer + filler). */
export const DEMO_CHATTY = 0.35;

/** `text` followed by a random filler. */
export function withFiller(text: string, rng: Rng): string {
  return text + (FILLERS[rng.int(0, FILLERS.length - 1)] as string);
}

export interface Demo {
  promptId: number;
  /** The demonstrated response text, to be followed by <eos>. */
  response: string;
  correct: boolean;
}

export interface DemoOptions {
  seed: number;
  /** Per-family probability of a correct demonstration; defaults to DEMO_ACCURACY. */
  accuracy?: Readonly<Record<Family, number>>;
  /** Probability of a chatty demonstration (answer + filler); defaults to DEMO_CHATTY. */
  chatty?: number;
}

/** One seeded demonstration per prompt, in the prompts' order. */
export function makeDemos(prompts: readonly Prompt[], options: DemoOptions): Demo[] {
  const accuracy = options.accuracy ?? DEMO_ACCURACY;
  const chatty = options.chatty ?? DEMO_CHATTY;
  const rng = new Rng(options.seed);
  return prompts.map((prompt) => {
    const p = accuracy[prompt.family];
    if (!(p >= 0 && p <= 1)) throw new RangeError(`accuracy for '${prompt.family}' must be in [0, 1], got ${p}`);
    const correct = rng.bernoulli(p);
    const answer = correct ? prompt.answer : corruptAnswer(prompt, rng);
    const response = rng.bernoulli(chatty) ? withFiller(answer, rng) : answer;
    return { promptId: prompt.id, response, correct: correct && response === prompt.answer };
  });
}
