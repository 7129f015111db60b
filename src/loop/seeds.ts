// Every random choice of a run derives from (run seed, iteration, purpose) alone, never from how many numbers
// were drawn before. So the run's random state is just its seed and iteration counter: a resumed run draws the
// same numbers as an uninterrupted one, and changing one purpose (e.g. the eval sample count) leaves the rest.

import { Rng } from "../util/random.js";

export const Purpose = {
  /** Which prompts the uniform strategy regenerates. */
  select: 1,
  /** The engine's sampling seed for the pool's responses. */
  generate: 2,
  /** Minibatch order. */
  shuffle: 3,
  /** The engine's sampling seed for evaluation; the same every iteration, so iterations are compared on equal draws. */
  evaluate: 4,
} as const;
export type Purpose = (typeof Purpose)[keyof typeof Purpose];

// Room for purposes per iteration in the fork stream number.
const PURPOSE_SLOTS = 16;

/** A generator for one purpose of one iteration (iteration 0 = evaluation-only, before training). */
export function iterationRng(runSeed: number, iteration: number, purpose: Purpose): Rng {
  return new Rng(runSeed).fork(iteration * PURPOSE_SLOTS + purpose);
}

/** A 32-bit seed for the engine's sampler. */
export function engineSeed(runSeed: number, iteration: number, purpose: Purpose): number {
  return iterationRng(runSeed, iteration, purpose).nextUint32();
}
