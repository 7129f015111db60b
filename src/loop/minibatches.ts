// Shuffled minibatches over the trainable pairs for E epochs.
//
// Every epoch visits each item exactly once in a fresh seeded order; the last
// minibatch of an epoch may be smaller (dropping it would starve small pools).
// Minibatches never span two epochs.

import type { Rng } from "../util/random.js";
import { trainablePairs, type Pool, type TrainablePair } from "./pool.js";

export interface MinibatchOptions {
  batchSize: number;
  epochs: number;
}

function checkOptions(options: MinibatchOptions): void {
  if (!Number.isInteger(options.batchSize) || options.batchSize < 1) {
    throw new RangeError(`batchSize must be a positive integer, got ${options.batchSize}`);
  }
  if (!Number.isInteger(options.epochs) || options.epochs < 0) {
    throw new RangeError(`epochs must be a non-negative integer, got ${options.epochs}`);
  }
}

/** Minibatches of `items`, epoch after epoch, each epoch shuffled with `rng`. */
export function makeMinibatches<T>(items: readonly T[], options: MinibatchOptions, rng: Rng): T[][] {
  checkOptions(options);
  const batches: T[][] = [];
  for (let epoch = 0; epoch < options.epochs; epoch++) {
    const order = rng.shuffle(items.slice());
    for (let start = 0; start < order.length; start += options.batchSize) {
      batches.push(order.slice(start, start + options.batchSize));
    }
  }
  return batches;
}

/** Minibatches of the pool's trainable pairs (in prompt-id order before shuffling). */
export function pairMinibatches(pool: Pool, options: MinibatchOptions, rng: Rng): TrainablePair[][] {
  return makeMinibatches(trainablePairs(pool), options, rng);
}
