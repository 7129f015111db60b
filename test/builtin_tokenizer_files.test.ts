// The built-in task's tokenizer as Hugging Face files (src/tasks/builtin/hf_tokenizer_files.ts): loaded back as a
// tokenizer they give the task's own ids for every prompt family (through the chat template: <bos> text '='), its
// decoding of responses and its stop token; and a built-in run's checkpoint is a model directory `optune generate`
// reads. (transformers' AutoTokenizer gives the same ids: checked by hand, README.)

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { loadConfig } from "../src/config/schema.js";
import { runGenerate } from "../src/cli/generate.js";
import { EngineModel } from "../src/engine/index.js";
import { runLoop } from "../src/loop/run.js";
import { writeBuiltinTokenizerFiles } from "../src/tasks/builtin/hf_tokenizer_files.js";
import { buildSplit } from "../src/tasks/builtin/prompts.js";
import { createBuiltinTask } from "../src/tasks/builtin/task.js";
import { decodeResponse, encode, encodePrompt, EOS_ID, VOCAB } from "../src/tasks/builtin/tokenizer.js";
import { HfTokenizer } from "../src/tokenizer/index.js";
import { TINY_TASK } from "./tiny_task.js";

const scratch = mkdtempSync(join(tmpdir(), "optune-builtin-tok-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("the built-in tokenizer as Hugging Face files", () => {
  const dir = join(scratch, "files");

  it("encodes every family's prompts and decodes responses as the task does", async () => {
    mkdirSync(dir, { recursive: true });
    writeBuiltinTokenizerFiles(dir, 64);
    const tok = await HfTokenizer.load(dir);
    expect(tok.vocabSize).toBe(VOCAB.length);
    expect(Array.from(tok.stopTokens.ids)).toEqual([EOS_ID]);
    const { train, eval: held } = buildSplit({ seed: 3, trainSize: 120, evalSize: 30 });
    for (const p of [...train, ...held]) {
      const viaChat = tok.encodeChat([{ role: "user", content: p.text }], { addGenerationPrompt: true });
      expect(Array.from(viaChat)).toEqual(Array.from(encodePrompt(p.text)));
      const answer = encode(p.answer);
      expect(tok.decode(answer)).toBe(decodeResponse(answer).text);
    }
    expect(Array.from(tok.encode("add: 1+2"))).toEqual([1, ...encode("add: 1+2")]); // <bos> first, as transformers
  });
});

describe("a built-in run's checkpoints", () => {
  it("are model directories optune generate reads", async () => {
    const config = loadConfig({ ...TINY_TASK, seed: 2, run: { dir: join(scratch, "run"), cacheDir: join(scratch, "cache") } });
    const task = await createBuiltinTask(config);
    const result = await runLoop({ config, task });
    const final = result.finalCheckpoint as string;
    task.writeCheckpointExtras?.(final);
    const out: string[] = [];
    const prompt = task.evalPrompts[0]!;
    // no --max-new-tokens: the default (64) would fill the task's 64 positions, so what the prompt leaves is used
    const sampling = { samples: 2, temperature: 0, topK: 0, topP: 1, seed: 0, batchSize: 16 };
    await runGenerate({ model: final, prompt: prompt.text, chat: true, ...sampling }, (line) => out.push(line));
    const [r] = (JSON.parse(out[0]!) as { responses: Array<{ text: string; token_ids: number[]; finished: boolean }> }).responses;
    // the same response the task's own greedy decoding of that prompt gives
    const model = await EngineModel.load(final);
    const room = model.config.maxPositions - prompt.ids.length;
    const own = await model.sample({ prompts: [prompt.ids], maxNewTokens: room, temperature: 0, stopTokens: [EOS_ID] });
    await model.dispose();
    expect(r!.token_ids).toEqual(Array.from(own.tokens));
    expect(r!.text).toBe(decodeResponse(own.tokens).text);
  });
});
