// Per-pair loss weights for weighted DPO (wDPO).
//
// OPTune scales each pair's DPO loss by w_i = f(beta2 * gap_i), where gap_i is
// the reward gap r_chosen - r_rejected, so pairs with a clear preference
// count more than near-ties. Weights are computed per minibatch:
//   none:    w_i = 1 (plain DPO)
//   linear:  w_i = gap_i / mean(gap) (mean 1 over the batch; beta2 > 0 cancels
//            out; all 1 when every gap is 0 or beta2 is 0)
//   exp:     w_i = n * softmax(beta2 * gap)_i (mean 1 over the batch)
//   sigmoid: w_i = sigmoid(beta2 * gap_i) (not normalized)

export type WeightFn = "none" | "linear" | "exp" | "sigmoid";

/** Logistic function without overflow for large |x|. */
export function stableSigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

function checkInputs(gaps: ArrayLike<number>, beta2: number): void {
  if (!(beta2 >= 0 && Number.isFinite(beta2))) throw new RangeError(`beta2 must be finite and >= 0, got ${beta2}`);
  for (let i = 0; i < gaps.length; i++) {
    const g = gaps[i] as number;
    // Chosen is the argmax, so a negative or NaN gap is a caller bug.
    if (!(g >= 0 && Number.isFinite(g))) throw new RangeError(`gap ${i} must be finite and >= 0, got ${g}`);
  }
}

function linearWeights(gaps: ArrayLike<number>, beta2: number): Float64Array {
  const n = gaps.length;
  const w = new Float64Array(n).fill(1);
  let max = 0;
  for (let i = 0; i < n; i++) max = Math.max(max, gaps[i] as number);
  if (max === 0 || beta2 === 0) return w;
  // Divide by the max first so the sum cannot overflow for huge gaps.
  let sum = 0;
  for (let i = 0; i < n; i++) sum += (gaps[i] as number) / max;
  for (let i = 0; i < n; i++) w[i] = (((gaps[i] as number) / max) * n) / sum;
  return w;
}

function expWeights(gaps: ArrayLike<number>, beta2: number): Float64Array {
  const n = gaps.length;
  const x = new Float64Array(n);
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    // Clamp so beta2 * gap cannot become Infinity (Infinity - Infinity is NaN).
    x[i] = Math.min(beta2 * (gaps[i] as number), Number.MAX_VALUE);
    max = Math.max(max, x[i] as number);
  }
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp((x[i] as number) - max);
    sum += x[i] as number;
  }
  // sum >= 1 because the max term is exp(0).
  for (let i = 0; i < n; i++) x[i] = ((x[i] as number) * n) / sum;
  return x;
}

/** Loss weights for a minibatch of pairs with the given non-negative reward gaps. */
export function pairWeights(gaps: ArrayLike<number>, fn: WeightFn, beta2: number): Float64Array {
  checkInputs(gaps, beta2);
  switch (fn) {
    case "none":
      return new Float64Array(gaps.length).fill(1);
    case "linear":
      return linearWeights(gaps, beta2);
    case "exp":
      return expWeights(gaps, beta2);
    case "sigmoid": {
      const w = new Float64Array(gaps.length);
      for (let i = 0; i < gaps.length; i++) w[i] = stableSigmoid(beta2 * (gaps[i] as number));
      return w;
    }
  }
}
