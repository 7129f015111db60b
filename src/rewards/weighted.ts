// A weighted sum of reward sources, optionally minus a penalty for responses cut off before end-of-sequence
// (a truncated answer should not win a pair because its prefix happened to score well). Itself a RewardSource,
// so the loop treats one source and a mix alike.

import { type RewardBatch, type RewardSource, scoreChecked } from "./source.js";

export interface WeightedComponent {
  source: RewardSource;
  weight: number;
}

export interface WeightedRewardOptions {
  /** Subtracted from the reward of every response that did not end with an end-of-sequence token. */
  missingEosPenalty?: number;
}

export class WeightedRewardSource implements RewardSource {
  readonly name: string;
  private readonly penalty: number;
  /** Each component's rewards for the last scored batch, in component order (for logging). */
  lastComponents: number[][] = [];

  constructor(
    private readonly components: readonly WeightedComponent[],
    options: WeightedRewardOptions = {},
  ) {
    if (components.length === 0) throw new Error("a weighted reward needs at least one source");
    components.forEach((c, i) => {
      if (!Number.isFinite(c.weight)) {
        throw new Error(`weighted reward: component ${i} (${c.source.name}) has weight ${c.weight}; use a finite number`);
      }
    });
    this.penalty = options.missingEosPenalty ?? 0;
    if (!Number.isFinite(this.penalty) || this.penalty < 0) {
      throw new Error(`weighted reward: missingEosPenalty must be a finite number >= 0, got ${this.penalty}`);
    }
    const terms = components.map((c) => `${c.weight} * ${c.source.name}`).join(" + ");
    this.name = this.penalty > 0 ? `${terms} - ${this.penalty} * missing EOS` : terms;
  }

  async score(batch: RewardBatch): Promise<number[]> {
    // Sources are independent (a native model, an endpoint, a function), so they run side by side.
    const parts = await Promise.all(this.components.map((c) => scoreChecked(c.source, batch)));
    this.lastComponents = parts;
    return batch.responses.map((response, i) => {
      let total = 0;
      this.components.forEach((c, k) => {
        total += c.weight * (parts[k] as number[])[i]!;
      });
      return response.endedWithEos ? total : total - this.penalty;
    });
  }

  async dispose(): Promise<void> {
    await Promise.all(this.components.map((c) => c.source.dispose?.()));
  }

  checkChatPrompts(): void {
    for (const c of this.components) c.source.checkChatPrompts?.();
  }
}
