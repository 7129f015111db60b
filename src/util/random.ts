// Seeded pseudo-random numbers for the TypeScript side of the loop.
//
// Generator: xoshiro128** (32-bit state words, period 2^128 - 1), seeded by
// running splitmix32 over the user seed. It is fast with plain 32-bit integer
// math (no BigInt) and good enough for sampling prompts, shuffling minibatches
// and building synthetic data. Everything that must be reproducible takes an
// Rng explicitly instead of touching Math.random.

/** splitmix32 step: a well-mixed 32-bit hash of a 32-bit counter. */
function splitmix32(x: number): number {
  let z = (x + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Checks that a seed is an integer the generator can represent exactly. */
function checkSeed(seed: number, what: string): void {
  if (!Number.isSafeInteger(seed)) {
    throw new RangeError(`${what} must be a safe integer, got ${seed}`);
  }
}

export class Rng {
  readonly seed: number;
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    checkSeed(seed, "seed");
    this.seed = seed;
    // Fold the high bits in too, so seeds that differ only above 2^32 differ.
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 0x100000000) >>> 0;
    let x = splitmix32(lo ^ splitmix32(hi));
    this.s0 = x;
    x = splitmix32(x);
    this.s1 = x;
    x = splitmix32(x);
    this.s2 = x;
    x = splitmix32(x);
    this.s3 = x;
    // An all-zero state would be a fixed point of xoshiro.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /**
   * An independent generator for a numbered sub-stream (e.g. one per
   * iteration), derived from this generator's seed only, so it does not
   * depend on how many numbers were drawn from the parent.
   */
  fork(stream: number): Rng {
    checkSeed(stream, "stream");
    const parent = splitmix32((this.seed >>> 0) ^ splitmix32(Math.floor(this.seed / 0x100000000) >>> 0));
    const lo = splitmix32(parent ^ splitmix32(stream >>> 0) ^ splitmix32(~(Math.floor(stream / 0x100000000) >>> 0)));
    const hi = splitmix32(lo) >>> 12; // 20 bits, so the derived seed stays a safe integer
    return new Rng(hi * 0x100000000 + lo);
  }

  /** Next raw 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [lo, hi] (both inclusive), without modulo bias. */
  int(lo: number, hi: number): number {
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || hi < lo) {
      throw new RangeError(`int(lo, hi) needs integers with lo <= hi, got ${lo}, ${hi}`);
    }
    const span = hi - lo + 1;
    if (span > 0x100000000) {
      // Wide ranges are rare here; a 53-bit double is unbiased enough for them.
      return lo + Math.floor(this.uniform() * span);
    }
    // Rejection sampling: discard the top partial block of 2^32 values.
    const limit = 0x100000000 - (0x100000000 % span);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return lo + (x % span);
    }
  }

  /** True with probability p. */
  bernoulli(p: number): boolean {
    return this.uniform() < p;
  }

  /** One element drawn uniformly. */
  choice<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("choice() from an empty array");
    return items[this.int(0, items.length - 1)] as T;
  }

  /** Fisher-Yates shuffle, in place; returns the same array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      const tmp = items[i] as T;
      items[i] = items[j] as T;
      items[j] = tmp;
    }
    return items;
  }

  /** `count` distinct elements drawn uniformly without replacement, in draw order. */
  sample<T>(items: readonly T[], count: number): T[] {
    if (!Number.isInteger(count) || count < 0 || count > items.length) {
      throw new RangeError(`sample() of ${count} from ${items.length} items`);
    }
    // Partial Fisher-Yates on a copy: only the first `count` slots are drawn.
    const copy = items.slice();
    for (let i = 0; i < count; i++) {
      const j = this.int(i, copy.length - 1);
      const tmp = copy[i] as T;
      copy[i] = copy[j] as T;
      copy[j] = tmp;
    }
    return copy.slice(0, count);
  }
}
