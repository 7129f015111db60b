"""PyTorch/transformers side of `optune bench engine`: the same ops on the same shapes, one JSON line each.
The *_bf16 ops run the same work under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's CPU mixed precision.

Usage: python torch_engine.py SPEC_JSON   (written by src/bench/engine.ts; see EngineBenchSpec there)

The first line is {"torch": version, "transformers": version, "threads": n}; then one line per op:
{"op", "shape", "sec", "tokens", "tok_per_s"}. If torch or transformers cannot be imported, the only line is
{"unavailable": reason} and the exit code is 0, so the caller can report torch figures as missing.
"""

import contextlib
import copy
import json
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    spec = json.loads(sys.argv[1])
    try:
        import torch
        import transformers
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel
    except Exception as e:  # any import failure means "no torch here", not a crash
        emit({"unavailable": f"{type(e).__name__}: {e}"})
        return

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    emit({"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads()})

    sz = spec["sizes"]
    for shape in spec["shapes"]:
        gemma = shape.get("arch") == "gemma3_text"
        if gemma:
            # Gemma 3 (text): transformers' defaults for what the shape leaves out (every 6th layer full, RoPE bases
            # 1e6 / 1e4), as the engine's; query_pre_attn_scalar = the head size, as in gemma-3-270m.
            cfg = Gemma3TextConfig(hidden_size=shape["d"], num_hidden_layers=shape["layers"],
                                   num_attention_heads=shape["heads"], num_key_value_heads=shape["kvHeads"],
                                   head_dim=shape["headDim"], intermediate_size=shape["ff"],
                                   vocab_size=shape["vocab"], max_position_embeddings=shape["positions"],
                                   sliding_window=shape["window"], query_pre_attn_scalar=shape["headDim"],
                                   attention_dropout=0.0)
            model = Gemma3ForCausalLM(cfg)
        else:
            # Dropout off: the engine has none, so the train step does the same work on both sides.
            cfg = GPT2Config(n_layer=shape["layers"], n_embd=shape["d"], n_head=shape["heads"],
                             vocab_size=shape["vocab"], n_positions=shape["positions"],
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
            model = GPT2LMHeadModel(cfg)
        vocab, warmup, reps = shape["vocab"], shape["warmup"], shape["reps"]

        def timed(fn):
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - t0) / reps

        def report(op, sec, tokens):
            emit({"op": op, "shape": shape["name"], "sec": sec, "tokens": tokens, "tok_per_s": tokens / sec})

        def precision(op):
            bf16 = op.endswith("_bf16")
            return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        for op in ("sample", "sample_bf16", "sample_top_p"):
            if op not in shape["ops"]:
                continue
            n, plen, new = sz["samplePrompts"], sz["samplePromptLen"], sz["sampleNewTokens"]
            prompts = torch.randint(0, vocab, (n, plen))
            mask = torch.ones_like(prompts)
            model.eval()

            def gen():
                with torch.no_grad(), precision(op):
                    model.generate(input_ids=prompts, attention_mask=mask, do_sample=True, top_k=0,
                                   top_p=spec["topP"] if op == "sample_top_p" else 1.0,
                                   max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

            report(op, timed(gen), n * new)

        nseq, slen, plen = sz["seqs"], sz["seqLen"], sz["seqPromptLen"]
        ids = torch.randint(0, vocab, (nseq, slen))

        def seq_logps(m):
            # Logits at positions plen-1 .. slen-2 predict the response tokens plen .. slen-1.
            logits = m(input_ids=ids).logits[:, plen - 1:-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, plen:, None]).squeeze(-1)
            return lp.sum(-1)

        if "logprobs" in shape["ops"]:
            model.eval()

            def lp():
                with torch.no_grad():
                    seq_logps(model)

            report("logprobs", timed(lp), nseq * slen)

        for op in ("dpo_step", "dpo_step_bf16", "dpo_step_lora"):
            if op not in shape["ops"]:
                continue
            trained = model
            if op == "dpo_step_lora":
                # PEFT on a copy, as the engine adapts a fresh model: rank, alpha and targets from the spec
                try:
                    import peft
                except Exception as e:
                    emit({"op": op, "shape": shape["name"], "unavailable": f"{op} needs PEFT (pip install peft): {e}"})
                    continue
                lora = spec["lora"]
                trained = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
                    r=lora["rank"], lora_alpha=lora["alpha"], target_modules=shape["loraTargets"], lora_dropout=0.0,
                    fan_in_fan_out=not gemma, task_type="CAUSAL_LM"))

            # Reference log-probs cached once, outside the timing: no reference forward in the step.
            trained.eval()
            with torch.no_grad(), precision(op):
                ref = seq_logps(trained)
            trained.train()
            # Same hyperparameters as the engine's defaults (no weight decay); LoRA: the adapters only.
            opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
            beta = spec["beta"]

            def step():
                with precision(op):
                    p = seq_logps(trained)
                d = (p[0::2] - ref[0::2]) - (p[1::2] - ref[1::2])
                loss = -torch.nn.functional.logsigmoid(beta * d).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()

            report(op, timed(step), nseq * slen)
            del trained

        del model


if __name__ == "__main__":
    main()
