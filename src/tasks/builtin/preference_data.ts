// Labelled comparison pairs for training the reward model on the built-in task.
//
// For each prompt, two candidate responses of random quality (the gold answer,
// one or two mistakes, a random string in the answer alphabet, or junk; <eos>
// sometimes missing) are ranked by the gold reward. Exact ties carry no
// preference and are redrawn. Each label is then flipped with probability
// flipProb to mimic noisy human annotators, so the reward model is a useful
// but imperfect proxy of the gold reward.
//
// labelCandidatePairs does the same for given candidates, e.g. samples of the
// SFT policy (as annotators compare model outputs in RLHF), which teaches the
// reward model the fine distinctions between the responses the loop will see.

import { Rng } from "../../util/random.js";
import { corruptAnswer, withFiller } from "./demos.js";
import { goldReward } from "./gold.js";
import { answerAlphabet, DIGITS, LETTERS, type Prompt } from "./prompts.js";

export interface Candidate {
  /** Response text before <eos>. */
  text: string;
  endedWithEos: boolean;
  /** The generated token ids, for a sampled candidate (its text cannot express stray special tokens). */
  ids?: Int32Array;
}

export interface PreferencePair {
  promptId: number;
  /** The response the (noisy) label prefers. */
  chosen: Candidate;
  rejected: Candidate;
  goldChosen: number;
  goldRejected: number;
  /** True when the label was flipped: then goldChosen < goldRejected. */
  flipped: boolean;
}

export interface PreferenceDataOptions {
  seed: number;
  /** Pairs drawn per prompt (default 1). */
  pairsPerPrompt?: number;
  /** Probability of swapping chosen and rejected (default 0.1). */
  flipProb?: number;
  /** Probability that a candidate lacks its <eos> (default 0.1). */
  noEosProb?: number;
}

const JUNK_ALPHABET = `${LETTERS}${DIGITS} `;
// Gold rewards closer than this count as a tie.
const TIE_EPSILON = 1e-9;
// Redraws allowed for one pair before giving up on that prompt.
const MAX_TRIES = 100;

function randomText(alphabet: string, minLength: number, maxLength: number, rng: Rng): string {
  const length = rng.int(minLength, maxLength);
  let s = "";
  for (let i = 0; i < length; i++) s += alphabet[rng.int(0, alphabet.length - 1)];
  return s;
}

/** A candidate response of random quality for the prompt. */
export function drawCandidate(prompt: Prompt, rng: Rng, noEosProb: number): Candidate {
  let text: string;
  switch (rng.int(0, 6)) {
    case 0:
      text = prompt.answer;
      break;
    case 5:
      text = withFiller(prompt.answer, rng);
      break;
    case 6:
      text = withFiller(corruptAnswer(prompt, rng, 1), rng);
      break;
    case 1:
      text = corruptAnswer(prompt, rng, 1);
      break;
    case 2:
      text = corruptAnswer(prompt, rng, 2);
      break;
    case 3:
      text = randomText(answerAlphabet(prompt.family), 1, prompt.answer.length + 2, rng);
      break;
    default:
      text = randomText(JUNK_ALPHABET, 1, 10, rng);
  }
  return { text, endedWithEos: !rng.bernoulli(noEosProb) };
}

function checkProbability(name: string, p: number): void {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`${name} must be in [0, 1], got ${p}`);
}

/** The pair of two candidates ranked by gold with a possible label flip, or null on a gold tie. */
function labelPair(prompt: Prompt, a: Candidate, b: Candidate, flipProb: number, rng: Rng): PreferencePair | null {
  const goldA = goldReward(prompt, a.text, a.endedWithEos);
  const goldB = goldReward(prompt, b.text, b.endedWithEos);
  if (Math.abs(goldA - goldB) < TIE_EPSILON) return null;
  const [better, worse, goldBetter, goldWorse] = goldA > goldB ? [a, b, goldA, goldB] : [b, a, goldB, goldA];
  const flipped = rng.bernoulli(flipProb);
  return flipped
    ? { promptId: prompt.id, chosen: worse, rejected: better, goldChosen: goldWorse, goldRejected: goldBetter, flipped }
    : { promptId: prompt.id, chosen: better, rejected: worse, goldChosen: goldBetter, goldRejected: goldWorse, flipped };
}

export interface CandidatePairOptions {
  seed: number;
  /** Probability of swapping chosen and rejected (default 0.1). */
  flipProb?: number;
}

/**
 * Noisy-labelled pairs among given candidates: candidates[i] belongs to
 * prompts[i] and is paired off in order (0 with 1, 2 with 3, ...); pairs with
 * equal gold reward (e.g. identical samples) are left out.
 */
export function labelCandidatePairs(
  prompts: readonly Prompt[],
  candidates: readonly (readonly Candidate[])[],
  options: CandidatePairOptions,
): PreferencePair[] {
  if (candidates.length !== prompts.length) {
    throw new RangeError(`labelCandidatePairs: ${prompts.length} prompts but ${candidates.length} candidate lists`);
  }
  const flipProb = options.flipProb ?? 0.1;
  checkProbability("flipProb", flipProb);
  const rng = new Rng(options.seed);
  const pairs: PreferencePair[] = [];
  prompts.forEach((prompt, i) => {
    const list = candidates[i] as readonly Candidate[];
    for (let j = 0; j + 1 < list.length; j += 2) {
      const pair = labelPair(prompt, list[j] as Candidate, list[j + 1] as Candidate, flipProb, rng);
      if (pair !== null) pairs.push(pair);
    }
  });
  return pairs;
}

/** Seeded noisy-labelled pairs, grouped by prompt in the prompts' order. */
export function makePreferencePairs(prompts: readonly Prompt[], options: PreferenceDataOptions): PreferencePair[] {
  const pairsPerPrompt = options.pairsPerPrompt ?? 1;
  const flipProb = options.flipProb ?? 0.1;
  const noEosProb = options.noEosProb ?? 0.1;
  if (!Number.isInteger(pairsPerPrompt) || pairsPerPrompt < 0) {
    throw new RangeError(`pairsPerPrompt must be a non-negative integer, got ${pairsPerPrompt}`);
  }
  checkProbability("flipProb", flipProb);
  checkProbability("noEosProb", noEosProb);

  const rng = new Rng(options.seed);
  const pairs: PreferencePair[] = [];
  for (const prompt of prompts) {
    for (let n = 0; n < pairsPerPrompt; n++) {
      for (let attempt = 0; attempt < MAX_TRIES; attempt++) {
        const a = drawCandidate(prompt, rng, noEosProb);
        const b = drawCandidate(prompt, rng, noEosProb);
        const pair = labelPair(prompt, a, b, flipProb, rng);
        if (pair === null) continue;
        pairs.push(pair);
        break;
      }
    }
  }
  return pairs;
}
