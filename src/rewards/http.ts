// A reward source behind an HTTP endpoint. Each request POSTs a JSON PlainRewardBatch (see module.ts) of at most
// batchSize items and expects {"rewards": [...]} (or a bare array) back, one finite number per item. Up to
// `concurrency` requests are in flight; each attempt has a timeout; network errors, timeouts, 408, 429 and 5xx
// are retried with exponential backoff. When the retries run out the whole score() call rejects with an
// HttpRewardError and the other requests of the call are aborted; nothing else changes, so a caller can catch it
// and retry the iteration or stop with its state intact.

import { checkRewards, toPlainBatch } from "./module.js";
import { checkRewardBatch, type RewardBatch, type RewardSource } from "./source.js";

export interface HttpRewardOptions {
  url: string;
  /** Items per request. */
  batchSize?: number;
  /** Requests in flight at once. */
  concurrency?: number;
  /** Per attempt, from sending the request to reading the whole response. */
  timeoutMs?: number;
  /** Attempts after the first one. */
  retries?: number;
  /** Wait before the first retry; doubled for each further one, capped at maxBackoffMs. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Extra request headers, e.g. an authorization token. */
  headers?: Record<string, string>;
  /** Also send the policy's token ids (promptIds, responseIds). */
  sendIds?: boolean;
}

export const HTTP_DEFAULTS = {
  batchSize: 32,
  concurrency: 4,
  timeoutMs: 30_000,
  retries: 3,
  backoffMs: 500,
  maxBackoffMs: 10_000,
} as const;

export class HttpRewardError extends Error {
  constructor(
    message: string,
    readonly url: string,
    /** Attempts made for the request that failed. */
    readonly attempts: number,
    /** HTTP status of the last attempt, when there was a response. */
    readonly status?: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "HttpRewardError";
  }
}

/** One failed attempt; `retry` says whether another attempt may succeed. */
class AttemptError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    readonly status?: number,
  ) {
    super(message);
  }
}

export class HttpRewardSource implements RewardSource {
  readonly name: string;
  private readonly o: Required<Omit<HttpRewardOptions, "headers" | "sendIds">> & { headers: Record<string, string>; sendIds: boolean };

  constructor(options: HttpRewardOptions) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new Error(`reward endpoint url ${JSON.stringify(options.url)} is not a valid URL; write it as http(s)://host:port/path`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new Error(`reward endpoint url ${options.url} must start with http:// or https://`);
    }
    this.o = {
      ...HTTP_DEFAULTS,
      ...definedOnly(options),
      headers: options.headers ?? {},
      sendIds: options.sendIds ?? false,
    };
    checkCount(this.o.batchSize, "batchSize", 1);
    checkCount(this.o.concurrency, "concurrency", 1);
    checkCount(this.o.retries, "retries", 0);
    checkCount(this.o.timeoutMs, "timeoutMs", 1);
    checkCount(this.o.backoffMs, "backoffMs", 0);
    checkCount(this.o.maxBackoffMs, "maxBackoffMs", 0);
    this.name = `reward endpoint ${url.href}`;
  }

  async score(batch: RewardBatch): Promise<number[]> {
    checkRewardBatch(batch);
    const n = batch.responses.length;
    const chunks: Array<{ start: number; end: number }> = [];
    for (let start = 0; start < n; start += this.o.batchSize) chunks.push({ start, end: Math.min(n, start + this.o.batchSize) });
    const rewards = new Array<number>(n);
    // Aborts the requests and backoff waits still running once one chunk has failed for good.
    const stop = new AbortController();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < chunks.length && !stop.signal.aborted) {
        const { start, end } = chunks[next++] as { start: number; end: number };
        const part = {
          prompts: batch.prompts.slice(start, end),
          responses: batch.responses.slice(start, end),
        };
        const scores = await this.scoreChunk(part, start, stop.signal);
        for (let i = 0; i < scores.length; i++) rewards[start + i] = scores[i] as number;
      }
    };
    const workers = Array.from({ length: Math.min(this.o.concurrency, chunks.length) }, () =>
      worker().catch((err: unknown) => {
        stop.abort();
        throw err;
      }),
    );
    const settled = await Promise.allSettled(workers);
    // Report the failure that stopped the call, not the aborts it caused in the other workers.
    const failures = settled.filter((s): s is PromiseRejectedResult => s.status === "rejected").map((s) => s.reason as unknown);
    const first = failures.find((e) => !(e instanceof AbortedError)) ?? failures[0];
    if (first !== undefined) throw first;
    return rewards;
  }

  private async scoreChunk(part: RewardBatch, offset: number, stop: AbortSignal): Promise<number[]> {
    const body = JSON.stringify(toPlainBatch(part, this.o.sendIds));
    const items = `items ${offset}..${offset + part.responses.length - 1}`;
    for (let attempt = 1; ; attempt++) {
      if (stop.aborted) throw new AbortedError();
      try {
        return await this.attempt(body, part.responses.length, stop);
      } catch (err) {
        if (stop.aborted) throw new AbortedError();
        const failure = err instanceof AttemptError ? err : new AttemptError(String(err), false);
        if (!failure.retry || attempt > this.o.retries) {
          const tries = failure.retry ? ` after ${attempt} attempt${attempt === 1 ? "" : "s"}` : "";
          throw new HttpRewardError(
            `${this.name} failed for ${items}${tries}: ${failure.message}`,
            this.o.url,
            attempt,
            failure.status,
            { cause: err },
          );
        }
        const delay = Math.min(this.o.maxBackoffMs, this.o.backoffMs * 2 ** (attempt - 1));
        await sleep(delay, stop);
      }
    }
  }

  private async attempt(body: string, n: number, stop: AbortSignal): Promise<number[]> {
    const timeout = AbortSignal.timeout(this.o.timeoutMs);
    let text: string;
    let status: number;
    try {
      const response = await fetch(this.o.url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json", ...this.o.headers },
        body,
        signal: AbortSignal.any([timeout, stop]),
      });
      status = response.status;
      text = await response.text();
    } catch (err) {
      if (timeout.aborted) throw new AttemptError(`no complete response within ${this.o.timeoutMs} ms`, true);
      const cause = (err as { cause?: unknown }).cause;
      const reason = cause instanceof Error ? cause.message : err instanceof Error ? err.message : String(err);
      throw new AttemptError(`request failed (${reason})`, true);
    }
    if (status < 200 || status >= 300) {
      const retry = status === 408 || status === 429 || status >= 500;
      throw new AttemptError(`HTTP ${status}: ${text.slice(0, 200)}`, retry, status);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new AttemptError(`response is not JSON: ${text.slice(0, 200)}`, false, status);
    }
    const rewards = Array.isArray(parsed) ? parsed : (parsed as { rewards?: unknown } | null)?.rewards;
    try {
      return checkRewards(rewards, n, "the endpoint");
    } catch (err) {
      throw new AttemptError(`${(err as Error).message} (expected {"rewards": [...]})`, false, status);
    }
  }
}

/** Raised in requests stopped because another chunk of the same call failed. */
class AbortedError extends Error {
  constructor() {
    super("aborted: another request of this batch failed");
  }
}

function sleep(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new AbortedError());
    };
    const timer = setTimeout(() => {
      stop.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    stop.addEventListener("abort", onAbort, { once: true });
  });
}

function checkCount(value: number, name: string, min: number): void {
  if (!Number.isInteger(value) || value < min) {
    throw new Error(`reward endpoint option ${name} must be an integer >= ${min}, got ${value}`);
  }
}

/** The options that were given a value (so undefined does not override a default). */
function definedOnly(options: HttpRewardOptions): Partial<typeof HTTP_DEFAULTS> & { url: string } {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) if (v !== undefined && k !== "headers" && k !== "sendIds") out[k] = v;
  return out as Partial<typeof HTTP_DEFAULTS> & { url: string };
}
