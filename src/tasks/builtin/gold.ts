// The hidden gold reward of the built-in task, in [0, 1].
//
// It is graded rather than binary so that an online preference loop has
// something to climb: a response that is almost right beats one that is
// far off, and only the exact answer followed by <eos> earns 1.
//
//   reward = 0.25 * format + 0.75 * similarity
//
//   format     = 0.5 * [ended with <eos>]
//              + 0.5 * (fraction of response characters in the family's answer
//                       alphabet: letters for copy/first/reverse, digits for
//                       sort/count/add; 0 for an empty response)
//
//   similarity, text families (copy, first, reverse, sort):
//              = 1 - levenshtein(response, answer) / max(|response|, |answer|)
//   similarity, numeric families (count, add):
//              = 1 / (1 + |value - answer| / max(1, answer / 10))
//                  when the response is a canonical non-negative integer
//                  (no leading zeros, at most 6 digits), so an off-by-one sum
//                  scores high and a wildly wrong one low;
//              = 0.5 * (text similarity as above) otherwise.

import { answerAlphabet, isNumericFamily, type Prompt } from "./prompts.js";

const FORMAT_WEIGHT = 0.25;
const SIMILARITY_WEIGHT = 0.75;
const CANONICAL_INTEGER = /^(0|[1-9][0-9]{0,5})$/;

/** Levenshtein distance (unit cost insert/delete/substitute) over UTF-16 units. */
export function editDistance(a: string, b: string): number {
  if (a.length === 0) return b.length;
  if (b.length === 0) return a.length;
  // One rolling row of the DP table.
  let previous = new Array<number>(b.length + 1);
  let current = new Array<number>(b.length + 1);
  for (let j = 0; j <= b.length; j++) previous[j] = j;
  for (let i = 1; i <= a.length; i++) {
    current[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const substitute = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      const remove = (previous[j] as number) + 1;
      const insert = (current[j - 1] as number) + 1;
      current[j] = Math.min(substitute, remove, insert);
    }
    [previous, current] = [current, previous];
  }
  return previous[b.length] as number;
}

/** 1 - normalized edit distance, in [0, 1]; two empty strings are identical. */
export function editSimilarity(a: string, b: string): number {
  const longest = Math.max(a.length, b.length);
  if (longest === 0) return 1;
  return 1 - editDistance(a, b) / longest;
}

function formatScore(family: Prompt["family"], response: string, endedWithEos: boolean): number {
  const alphabet = answerAlphabet(family);
  let clean = 0;
  for (let i = 0; i < response.length; i++) if (alphabet.includes(response[i] as string)) clean += 1;
  const cleanFraction = response.length === 0 ? 0 : clean / response.length;
  return 0.5 * (endedWithEos ? 1 : 0) + 0.5 * cleanFraction;
}

function similarityScore(family: Prompt["family"], answer: string, response: string): number {
  if (!isNumericFamily(family)) return editSimilarity(response, answer);
  if (!CANONICAL_INTEGER.test(response)) return 0.5 * editSimilarity(response, answer);
  const target = Number(answer);
  const scale = Math.max(1, target / 10);
  return 1 / (1 + Math.abs(Number(response) - target) / scale);
}

/** Gold reward of a decoded response (text before <eos>) to a prompt, in [0, 1]. */
export function goldReward(
  prompt: Pick<Prompt, "family" | "answer">,
  response: string,
  endedWithEos: boolean,
): number {
  const reward =
    FORMAT_WEIGHT * formatScore(prompt.family, response, endedWithEos) +
    SIMILARITY_WEIGHT * similarityScore(prompt.family, prompt.answer, response);
  // Guard against rounding drift just outside the documented range.
  return Math.min(1, Math.max(0, reward));
}
