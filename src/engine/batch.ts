// Packing sequences into the engine's ragged layout (tokens back to back + offsets), and converting plain number
// arrays into the typed arrays the addon takes, with messages that name the offending field and index.

import type { Batch } from "./types.js";

export interface SequenceInput {
  prompt: ArrayLike<number>;
  response: ArrayLike<number>;
}

/** Prompts packed back to back, the way sample() takes them. */
export interface PackedPrompts {
  tokens: Int32Array;
  /** nPrompts + 1. */
  offsets: Int32Array;
}

/** An Int32Array copy of integer values (an Int32Array is passed through). */
export function toInt32Array(values: ArrayLike<number>, name: string): Int32Array {
  if (values instanceof Int32Array) return values;
  const out = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) {
      throw new RangeError(`${name}[${i}] must be a 32-bit integer, got ${String(v)}`);
    }
    out[i] = v;
  }
  return out;
}

/** A Float32Array copy of finite values (a Float32Array is checked and passed through). */
export function toFloat32Array(values: ArrayLike<number>, name: string): Float32Array {
  const out = values instanceof Float32Array ? values : Float32Array.from(values);
  for (let i = 0; i < out.length; i++) {
    // Checked after conversion: a finite double beyond float range becomes Infinity.
    if (!Number.isFinite(out[i])) {
      throw new RangeError(`${name}[${i}] is ${String(values[i])}; all values must be finite`);
    }
  }
  return out;
}

/** Packs (prompt, response) pairs into one Batch. Each prompt needs at least one token. */
export function packBatch(sequences: readonly SequenceInput[]): Batch {
  let total = 0;
  for (const s of sequences) total += s.prompt.length + s.response.length;
  const tokens = new Int32Array(total);
  const offsets = new Int32Array(sequences.length + 1);
  const promptLens = new Int32Array(sequences.length);
  let at = 0;
  sequences.forEach((s, i) => {
    if (s.prompt.length < 1) throw new RangeError(`sequence ${i}: the prompt needs at least one token`);
    tokens.set(toInt32Array(s.prompt, `sequences[${i}].prompt`), at);
    tokens.set(toInt32Array(s.response, `sequences[${i}].response`), at + s.prompt.length);
    at += s.prompt.length + s.response.length;
    promptLens[i] = s.prompt.length;
    offsets[i + 1] = at;
  });
  return { tokens, offsets, promptLens };
}

/** Packs prompts for sample(). */
export function packPrompts(prompts: readonly ArrayLike<number>[]): PackedPrompts {
  const batch = packBatch(prompts.map((prompt) => ({ prompt, response: [] })));
  return { tokens: batch.tokens, offsets: batch.offsets };
}

/** Views (not copies) of each packed sequence: tokens[offsets[i] .. offsets[i+1]). */
export function splitPacked<T extends Int32Array | Float32Array>(values: T, offsets: Int32Array): T[] {
  const out: T[] = [];
  for (let i = 0; i + 1 < offsets.length; i++) {
    out.push(values.subarray(offsets[i] as number, offsets[i + 1] as number) as T);
  }
  return out;
}
