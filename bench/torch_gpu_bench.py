"""PyTorch peers of the native CUDA benchmarks (issue 5), measured in the same run on the same GPU.

GPT-2 124M (GPT2LMHeadModel from a GPT2Config: random weights, no download), as the anchors in
../shared/anchors/h100_torch_baseline.py and h100_torch_compiled_baseline.py measure it:
  - sample:   generate(), 64 prompts x 64 tokens, 128 new tokens (min = max), do_sample, top_k 0, temperature 1;
  - logprobs: sequence log-probs of 64 x 512 tokens under no_grad (full logits, float log_softmax, gather);
  - dpo_step: 32 pairs x 512 tokens: reference forward under no_grad, policy forward + backward, fused AdamW.
Eager in fp32 (TF32 matmuls allowed, as the anchors) and in bf16 autocast; then the strongest paths: a
torch.compile'd DPO step (bf16 autocast) and generate with a static KV cache (transformers compiles its decode
step) in bf16 autocast. Timing: warm-up calls, then the mean of timed calls between two synchronizes.
Peak memory: torch.cuda.max_memory_allocated() from a reset right before the op (the models resident then count).

Every measurement runs in its own try/except under a time limit (SIGALRM) and the whole script under a total
budget: a failure or a timeout is one {"error": ...} line and the script goes on.

Output: one JSON line per measurement, with the native benches' field names:
  {"impl": "torch-eager" | "torch-compile", "op": "sample" | "logprobs" | "dpo_step", "precision": "fp32" | "bf16",
   "tok_per_s": ..., "peak_mem_bytes": ..., "sec": ..., ...}
The first line names the versions and the GPU. Without torch, transformers or a GPU the only line is
{"unavailable": reason} and the exit code is 0.

Usage: python3 bench/torch_gpu_bench.py [--skip-compiled | --only-compiled] [--op-budget S] [--total-budget S]
       python3 bench/torch_gpu_bench.py --smoke   (tiny model and shapes on the CPU: checks the script itself)
"""

import argparse
import contextlib
import json
import signal
import sys
import time
import traceback


def emit(**kw):
    print(json.dumps(kw), flush=True)


class OpTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Raises OpTimeout in the main thread after `seconds` (Python code only: a running kernel finishes first)."""
    def on_alarm(signum, frame):
        raise OpTimeout(f"over the {seconds:.0f} s limit")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-compiled", action="store_true", help="skip the torch.compile paths (slow to compile)")
    ap.add_argument("--only-compiled", action="store_true",
                    help="only the torch.compile paths (a second call after one with --skip-compiled)")
    ap.add_argument("--op-budget", type=float, default=90.0, help="seconds allowed per measurement")
    ap.add_argument("--total-budget", type=float, default=230.0, help="seconds for the whole script")
    ap.add_argument("--smoke", action="store_true", help="tiny model and shapes on the CPU (tests this script)")
    args = ap.parse_args()
    if args.skip_compiled and args.only_compiled:
        ap.error("--skip-compiled and --only-compiled leave nothing to measure: give one of them")
    start = time.perf_counter()

    try:
        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except Exception as e:  # no torch here: report it, do not fail the GPU check
        emit(unavailable=f"{type(e).__name__}: {e}")
        return
    if not args.smoke and not torch.cuda.is_available():
        emit(unavailable="no CUDA device visible to torch")
        return

    dev = "cpu" if args.smoke else "cuda"
    cuda = dev == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the anchors: "fp32" matmuls on TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if args.smoke:
        cfg = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256, bos_token_id=0, eos_token_id=0)
        B, P, N, SEQS, T = 4, 8, 8, 8, 32
    else:
        cfg = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)  # GPT2Config() defaults
        B, P, N, SEQS, T = 64, 64, 128, 64, 512
    emit(torch=torch.__version__, transformers=transformers.__version__,
         gpu=torch.cuda.get_device_name(0) if cuda else "cpu (smoke)", tf32=cuda, shape=cfg)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return torch.cuda.max_memory_allocated() if cuda else 0

    def timed(fn, warm, reps):
        """Mean seconds per call after `warm` calls, and the first call's seconds (compilation, for compiled paths)."""
        t = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t
        for _ in range(warm - 1):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t) / reps, first

    def make_model():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(**cfg)).to(dev)

    def autocast(prec):
        if prec == "bf16":
            return torch.autocast(dev, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def seq_logps(model, ids):
        logits = model(input_ids=ids).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)

    gen = torch.Generator(device="cpu").manual_seed(1)
    prompts = torch.randint(0, cfg["vocab_size"], (B, P), generator=gen).to(dev)
    seqs = torch.randint(0, cfg["vocab_size"], (SEQS, T), generator=gen).to(dev)

    def measure(impl, op, prec, fn, tokens, warm, reps, **extra):
        """Times fn under the per-op limit (and what is left of the total budget); one JSON line either way."""
        left = args.total_budget - (time.perf_counter() - start)
        if left < 5:
            emit(impl=impl, op=op, precision=prec, error="skipped: the script's total budget is spent")
            return
        try:
            reset_peak()
            t0 = time.perf_counter()
            with time_limit(min(args.op_budget, left)):
                sec, first = timed(fn, warm, reps)
            emit(impl=impl, op=op, precision=prec, tok_per_s=tokens / sec, peak_mem_bytes=peak(), sec=sec,
                 tokens=tokens, first_call_s=first, wall_s=time.perf_counter() - t0, **extra)
        except Exception as e:
            emit(impl=impl, op=op, precision=prec, error=f"{type(e).__name__}: {e}"[:300],
                 trace=traceback.format_exc()[-300:])
        finally:
            sync()

    def dpo_step_fn(policy, ref, opt, prec):
        def step():
            with torch.no_grad(), autocast(prec):
                r = seq_logps(ref, seqs)
            with autocast(prec):
                p = seq_logps(policy, seqs)
                margin = (p[0::2] - r[0::2]) - (p[1::2] - r[1::2])  # pair j: chosen 2j, rejected 2j + 1
                loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    # ---- eager -------------------------------------------------------------------------------------------------
    for prec in [] if args.only_compiled else ["fp32", "bf16"]:
        try:
            policy = make_model().eval()
        except Exception as e:
            emit(impl="torch-eager", precision=prec, error=f"model: {type(e).__name__}: {e}"[:300])
            continue

        def sample():
            with torch.no_grad(), autocast(prec):
                policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                temperature=1.0, max_new_tokens=N, min_new_tokens=N, pad_token_id=0)
        measure("torch-eager", "sample", prec, sample, B * N, warm=1, reps=3, batch=B, prompt=P, new=N)

        def logprobs():
            with torch.no_grad(), autocast(prec):
                seq_logps(policy, seqs)
        measure("torch-eager", "logprobs", prec, logprobs, SEQS * T, warm=2, reps=5, sequences=SEQS, seqlen=T)

        ref = None
        try:
            policy.train()
            ref = make_model().eval()
            opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=cuda)
            measure("torch-eager", "dpo_step", prec, dpo_step_fn(policy, ref, opt, prec), SEQS * T, warm=2, reps=5,
                    pairs=SEQS // 2, seqlen=T)
            del opt
        except Exception as e:
            emit(impl="torch-eager", op="dpo_step", precision=prec, error=f"{type(e).__name__}: {e}"[:300])
        del policy, ref
        reset_peak()

    if args.skip_compiled:
        emit(impl="torch-compile", skipped="--skip-compiled")
        return

    # ---- the strongest paths: compiled DPO step, static-cache generate (bf16 autocast) ------------------------------
    try:
        policy, ref = make_model().train(), make_model().eval()
        cpol, cref = torch.compile(policy), torch.compile(ref)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=cuda)
        step = dpo_step_fn(cpol, cref, opt, "bf16")
        measure("torch-compile", "dpo_step", "bf16", step, SEQS * T, warm=3, reps=5, pairs=SEQS // 2, seqlen=T,
                note="first warm-up call compiles")
        del opt, cpol, cref, policy, ref
    except Exception as e:
        emit(impl="torch-compile", op="dpo_step", precision="bf16", error=f"{type(e).__name__}: {e}"[:300])
    reset_peak()
    try:
        policy = make_model().eval()
        policy.generation_config.cache_implementation = "static"  # transformers compiles the decode step itself

        def sample_static():
            with torch.no_grad(), autocast("bf16"):
                policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                temperature=1.0, max_new_tokens=N, min_new_tokens=N, pad_token_id=0)
        measure("torch-compile", "sample", "bf16", sample_static, B * N, warm=2, reps=3, batch=B, prompt=P, new=N,
                note="static KV cache; first warm-up call compiles")
    except Exception as e:
        emit(impl="torch-compile", op="sample", precision="bf16", error=f"{type(e).__name__}: {e}"[:300])
    emit(done=True, seconds=time.perf_counter() - start)


if __name__ == "__main__":
    main()
