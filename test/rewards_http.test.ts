// The HTTP reward source against a real server on loopback: batching, the concurrency limit, timeouts, retries
// with exponential backoff, and the final error (after which the source still works, so a loop can carry on).

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";

import { HttpRewardError, HttpRewardSource } from "../src/rewards/http.js";
import type { PlainRewardBatch } from "../src/rewards/module.js";
import type { RewardBatch } from "../src/rewards/source.js";

type Handler = (body: PlainRewardBatch, req: IncomingMessage, res: ServerResponse, attempt: number) => void;

let server: Server;
let url: string;
let handler: Handler;
/** Arrival time (ms) and body of every request, in arrival order. */
let requests: Array<{ at: number; body: PlainRewardBatch; headers: IncomingMessage["headers"] }>;
let inFlight = 0;
let maxInFlight = 0;

beforeAll(async () => {
  server = createServer((req, res) => {
    let text = "";
    req.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
    req.on("end", () => {
      const body = JSON.parse(text) as PlainRewardBatch;
      requests.push({ at: performance.now(), body, headers: req.headers });
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      res.on("close", () => inFlight--);
      handler(body, req, res, requests.length);
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/score`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((done) => server.close(done));
});

beforeEach(() => {
  requests = [];
  inFlight = 0;
  maxInFlight = 0;
});

function reply(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

/** Rewards = response lengths, so each item's reward is known and order mix-ups show. */
const byLength: Handler = (body, _req, res) => reply(res, 200, { rewards: body.responses.map((r) => r.length) });

function makeBatch(n: number): RewardBatch {
  const prompt = { text: "Q:", ids: Int32Array.from([1, 2]) };
  return {
    prompts: Array.from({ length: n }, () => prompt),
    responses: Array.from({ length: n }, (_, i) => ({ text: "x".repeat(i + 1), ids: Int32Array.from([3]), endedWithEos: i % 2 === 0 })),
  };
}

describe("HTTP reward source", () => {
  it("splits a batch into requests, keeps item order and never exceeds the concurrency limit", async () => {
    handler = (body, req, res) => setTimeout(() => byLength(body, req, res, 0), 40);
    const source = new HttpRewardSource({ url, batchSize: 2, concurrency: 2, headers: { authorization: "Bearer t" } });
    expect(await source.score(makeBatch(7))).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(requests.map((r) => r.body.responses.length).sort()).toEqual([1, 2, 2, 2]);
    expect(maxInFlight).toBe(2);
    expect(requests[0]!.headers["authorization"]).toBe("Bearer t");
    expect(requests[0]!.headers["content-type"]).toBe("application/json");
    const first = requests.find((r) => r.body.responses[0] === "x")!.body;
    expect(first).toEqual({ prompts: ["Q:", "Q:"], responses: ["x", "xx"], messages: [null, null], endedWithEos: [true, false] });
  });

  it("accepts a bare array and sends policy ids when asked", async () => {
    handler = (body, _req, res) => reply(res, 200, body.responseIds!.map((ids) => ids.length));
    const source = new HttpRewardSource({ url, sendIds: true });
    expect(await source.score(makeBatch(3))).toEqual([1, 1, 1]);
    expect(requests[0]!.body.promptIds).toEqual([[1, 2], [1, 2], [1, 2]]);
  });

  it("retries 5xx and 429 with exponential backoff, then succeeds", async () => {
    handler = (body, req, res, attempt) => {
      if (attempt === 1) return reply(res, 503, { error: "busy" });
      if (attempt === 2) return reply(res, 429, { error: "slow down" });
      byLength(body, req, res, attempt);
    };
    const source = new HttpRewardSource({ url, retries: 3, backoffMs: 60 });
    expect(await source.score(makeBatch(2))).toEqual([1, 2]);
    expect(requests).toHaveLength(3);
    const gaps = [requests[1]!.at - requests[0]!.at, requests[2]!.at - requests[1]!.at];
    // 60 ms, then 120 ms (a little slack for timer granularity).
    expect(gaps[0]).toBeGreaterThanOrEqual(55);
    expect(gaps[1]).toBeGreaterThanOrEqual(115);
  });

  it("times out a request that does not answer, and retries it", async () => {
    handler = (body, req, res, attempt) => {
      if (attempt === 1) return; // never answers
      byLength(body, req, res, attempt);
    };
    const source = new HttpRewardSource({ url, timeoutMs: 150, retries: 1, backoffMs: 10 });
    const started = performance.now();
    expect(await source.score(makeBatch(2))).toEqual([1, 2]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
    expect(requests).toHaveLength(2);
  });

  it("fails clearly after the last retry; the source works again afterwards", async () => {
    handler = (_body, _req, res) => reply(res, 500, { error: "model crashed" });
    const source = new HttpRewardSource({ url, retries: 2, backoffMs: 5 });
    const err = await source.score(makeBatch(2)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HttpRewardError);
    const e = err as HttpRewardError;
    expect(e.attempts).toBe(3);
    expect(e.status).toBe(500);
    expect(e.message).toContain(`reward endpoint ${url} failed for items 0..1 after 3 attempts: HTTP 500`);
    expect(e.message).toContain("model crashed");
    expect(requests).toHaveLength(3);

    handler = byLength;
    expect(await source.score(makeBatch(2))).toEqual([1, 2]);
  });

  it("times out every attempt, then fails naming the timeout", async () => {
    handler = () => undefined;
    const source = new HttpRewardSource({ url, timeoutMs: 50, retries: 1, backoffMs: 5 });
    await expect(source.score(makeBatch(1))).rejects.toThrow(/failed for items 0\.\.0 after 2 attempts: no complete response within 50 ms/);
  });

  it("does not retry a client error or a malformed answer", async () => {
    handler = (_body, _req, res) => reply(res, 400, { error: "bad field" });
    const source = new HttpRewardSource({ url, retries: 3, backoffMs: 5 });
    await expect(source.score(makeBatch(2))).rejects.toThrow(/failed for items 0\.\.1: HTTP 400: .*bad field/);
    expect(requests).toHaveLength(1);

    requests = [];
    handler = (_body, _req, res) => reply(res, 200, { rewards: [1] });
    await expect(source.score(makeBatch(2))).rejects.toThrow(/the endpoint returned 1 rewards for 2 responses.*expected \{"rewards"/);
    expect(requests).toHaveLength(1);

    handler = (_body, _req, res) => reply(res, 200, { rewards: [1, null] });
    await expect(source.score(makeBatch(2))).rejects.toThrow(/returned null for item 1/);
  });

  it("stops the other requests of the call once one has failed for good", async () => {
    handler = (body, req, res) => {
      if (body.responses[0] === "x") return reply(res, 400, { error: "no" });
      setTimeout(() => byLength(body, req, res, 0), 300);
    };
    const source = new HttpRewardSource({ url, batchSize: 1, concurrency: 2 });
    const started = performance.now();
    await expect(source.score(makeBatch(6))).rejects.toThrow(/items 0\.\.0: HTTP 400/);
    expect(performance.now() - started).toBeLessThan(250);
    expect(requests.length).toBeLessThanOrEqual(2);
  });

  it("retries a refused connection and then names it", async () => {
    const closed = createServer();
    await new Promise<void>((done) => closed.listen(0, "127.0.0.1", done));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((done) => closed.close(done));
    const source = new HttpRewardSource({ url: `http://127.0.0.1:${port}/`, retries: 1, backoffMs: 5 });
    await expect(source.score(makeBatch(1))).rejects.toThrow(/after 2 attempts: request failed \(.*ECONNREFUSED/);
  });

  it("rejects bad options up front", () => {
    expect(() => new HttpRewardSource({ url: "localhost:8000" })).toThrow(/must start with http:\/\/ or https:\/\//);
    expect(() => new HttpRewardSource({ url: "not a url" })).toThrow(/is not a valid URL/);
    expect(() => new HttpRewardSource({ url, concurrency: 0 })).toThrow(/concurrency must be an integer >= 1, got 0/);
    expect(() => new HttpRewardSource({ url, retries: -1 })).toThrow(/retries must be an integer >= 0/);
  });
});
