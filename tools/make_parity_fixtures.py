#!/usr/bin/env python3
"""Parity fixtures: tiny transformers models and the values the native engine must reproduce on them.

Run with the reference venv (PyTorch CPU + transformers + safetensors):
    PY=$(/work/shared/tools/ref-venv.sh /tmp/ref) && $PY tools/make_parity_fixtures.py [CASE...]
Writes native/test/fixtures/parity/<case>/ for the cases gpt2, llama, qwen2, gpt2_rm, llama_rm, qwen3, qwen3_rm,
gemma3, gemma3_rm, llama_rope, smollm3, olmo2, mistral, mistral_rm, smollm3_rm, olmo2_rm, gemma3_mm, qwen2_rm (or
only the ones named):
    config.json, model.safetensors   initial weights, fp32, via save_pretrained (safetensors)
    case.json                        the batch, pairs, weights, reference log-probs, beta, AdamW settings
    expected.safetensors             expected values, fp32 (names below)

Precision: weights are drawn in fp32 and saved in fp32; the reference is then computed with the model cast to
float64 (model.double()) and stored rounded to fp32. The expected values are thus the exact answer for the stored
fp32 weights, free of PyTorch's own fp32 rounding; the engine's fp32 error is the only error the test sees. The
script also reruns everything in fp32 and prints how far that lands from the float64 reference, as a guide to what
tolerance an fp32 engine can meet.

Semantics (what native/core/engine.h implements). Each sequence is run alone (batch size 1, no padding) and the
results are packed in batch order:
    logits        [n_tokens, vocab], every position
    token_logps   [n_response_tokens]: for p >= prompt_len, log_softmax(logits[p - 1])[token p]
    seq_logps     [n_seq]: per-sequence sums of token_logps
    DPO  h_j = (pi_c - ref_c) - (pi_r - ref_r);  loss = sum_j w_j * -logsigmoid(beta * h_j) / n_pairs
    IPO  loss = sum_j w_j * (h_j - 1 / (2 beta))^2 / n_pairs
    SFT  loss = -sum_i sw_i * sum_{t in response i} logp_t / n_response_tokens
    BT   (reward models) s_i = score at the last token of sequence i;
         loss = sum_j w_j * -logsigmoid(s_c - s_r) / n_pairs
    AdamW: 3 steps of the weighted DPO (LM) or BT (RM) loss on the same batch; each step zeroes grads, backward,
         clip_grad_norm_(max_grad_norm) (its pre-clip norm is stored), torch.optim.AdamW with weight decay only on
         parameters with dim >= 2 (matrices, embeddings, score head; not biases or norm weights).
Gradients are stored per parameter under the state_dict name; a tied lm_head is not stored separately (the
embedding's gradient holds both contributions). Names in expected.safetensors:
    LM:  logits token_logps seq_logps dpo_loss ipo_loss dpo_grad/<name> [sft_loss sft_grad/<name>: gpt2, llama]
         after3/<name> step_losses step_grad_norms
    RM:  scores bt_loss bt_grad/<name> after3/<name> step_losses step_grad_norms
"""
import copy
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "native", "test", "fixtures", "parity")

VOCAB = 64
PAD, BOS, EOS = 0, 1, 2  # ids inside the tiny vocabulary (GPT-2's defaults, 50256, would be out of range)
SEQ_LENS = [7, 12, 5, 10]
PROMPT_LENS = [3, 5, 2, 4]
CHOSEN, REJECTED = [0, 2], [1, 3]
PAIR_WEIGHTS = [1.0, 0.5]
SEQ_WEIGHTS = [1.0, 0.5, 2.0, 1.0]
REF_OFFSETS = ([0.75, -0.5], [-0.25, 0.375])  # ref = policy logp + offset (chosen, rejected), keeps DPO off log(2)
BETA = 0.1
ADAMW = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "max_grad_norm": 1.0}
N_STEPS = 3


def f32(x):
    """A Python float that is exactly representable in fp32, so JSON round-trips it into the engine unchanged."""
    return float(torch.tensor(x, dtype=torch.float32).item())


def make_model(case):
    common = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if case.startswith("gpt2"):
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new",
                                      tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      **common)
    elif case.startswith("gemma3"):
        # the policy's full-attention layer also has linear RoPE scaling (as gemma-3-4b and up), factor 2
        full_rope = {"rope_type": "default", "rope_theta": 100000.0}
        if case == "gemma3":
            full_rope = {"rope_type": "linear", "rope_theta": 100000.0, "factor": 2.0}
        # Gemma 3 (text): a sliding window of 4 tokens on layers 0 and 2 (shorter than every sequence, so the window
        # shows), full attention with another RoPE base on layer 1, and query_pre_attn_scalar 24 != head_dim 16 (the
        # attention scale is 24^-0.5, not head_dim's).
        cfg = transformers.Gemma3TextConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": full_rope,
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            rms_norm_eps=1e-6, max_position_embeddings=64, attention_bias=case.endswith("_rm"),
            tie_word_embeddings=True, **common)
    elif case.startswith("smollm3"):
        # SmolLM3: layer 1 without RoPE (NoPE) and with a sliding window of 4 (shorter than every sequence); layers
        # 0 and 2 rotate and attend fully
        cfg = transformers.SmolLM3Config(
            hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            no_rope_layers=[1, 0, 1], use_sliding_window=True, sliding_window=4,
            layer_types=["full_attention", "sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
            max_position_embeddings=64, tie_word_embeddings=True, **common)
    elif case.startswith("olmo2"):
        # OLMo 2: no norms before the attention and the MLP, norms on their outputs, q and k normalized over all
        # heads together (q_norm [32], k_norm [16]); untied
        cfg = transformers.Olmo2Config(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
            max_position_embeddings=64, tie_word_embeddings=False, **common)
    elif case.startswith("mistral"):
        # Mistral: every layer attends through a sliding window of 4 (shorter than every sequence, so it shows), as
        # Mistral 7B v0.1; the reward model has none (sliding_window null, as v0.2 and later); untied, no biases
        cfg = transformers.MistralConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            sliding_window=None if case.endswith("_rm") else 4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
            max_position_embeddings=64, tie_word_embeddings=False, **common)
    else:
        family = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}.get(case[:5],
                                                                                               transformers.LlamaConfig)
        extra = {}
        if case.startswith("qwen3"):
            # head_dim 16 with hidden 32 and 4 heads: q is wider than the hidden state (as in Qwen3-0.6B, 2048 vs
            # 1024); the reward model also has Qwen3's optional attention biases.
            extra = dict(head_dim=16, attention_bias=case.endswith("_rm"))
        if case == "llama_rope":
            # Llama 3.1+'s "llama3" RoPE scaling with an original context of 16: of head_dim 8's four frequencies
            # (wavelengths 6.3, 63, 628, 6283) the first lies below 16 / high_freq_factor = 8 (kept), the second
            # between that and 16 / low_freq_factor = 64 (blended), the other two beyond (divided by the factor)
            extra = dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                          "low_freq_factor": 0.25, "high_freq_factor": 2.0,
                                          "original_max_position_embeddings": 16})
        else:
            extra["rope_theta"] = 10000.0
        cfg = family(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=64,
                     tie_word_embeddings=case.startswith("qwen"), **extra, **common)
    if case.endswith("_rm"):
        cfg.num_labels = 1
        cls = {"gpt2": transformers.GPT2ForSequenceClassification,
               "llama": transformers.LlamaForSequenceClassification,
               "qwen2": transformers.Qwen2ForSequenceClassification,
               "qwen3": transformers.Qwen3ForSequenceClassification,
               "gemma3": transformers.Gemma3TextForSequenceClassification,
               "mistral": transformers.MistralForSequenceClassification,
               "smollm3": transformers.SmolLM3ForSequenceClassification,
               "olmo2": transformers.Olmo2ForSequenceClassification}[case[:-3]]
    else:
        cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
               "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
               "gemma3": transformers.Gemma3ForCausalLM, "llama_rope": transformers.LlamaForCausalLM,
               "smollm3": transformers.SmolLM3ForCausalLM, "olmo2": transformers.Olmo2ForCausalLM,
               "mistral": transformers.MistralForCausalLM}[case]
    cfg._attn_implementation = "eager"  # plain softmax attention; no kernel choice can differ between runs
    model = cls(cfg).float().eval()  # eval: dropout off (all dropout rates are 0 as well)
    return model


def randomize(model, seed):
    """Every parameter non-trivial, so every gradient path is exercised: norm weights 1 + 0.1 N, biases 0.05 N,
    embeddings 0.3 N, matrices 0.15 N (large enough that attention and logits are far from uniform). Gemma's norms
    scale by 1 + weight, so theirs are 0.1 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            is_norm = "ln_" in name or "norm" in name
            if is_norm and name.endswith(".weight"):
                p.copy_((0.0 if isinstance(model.config, transformers.Gemma3TextConfig) else 1.0) + 0.1 * n)
            elif name.endswith(".bias"):
                p.copy_(0.05 * n)
            elif "wte" in name or "wpe" in name or "embed_tokens" in name:
                p.copy_(0.3 * n)
            else:
                p.copy_(0.15 * n)


def make_batch(seed):
    g = torch.Generator().manual_seed(seed)
    # Tokens from [3, VOCAB): never PAD (the reward models locate the last token by pad id), BOS or EOS.
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in SEQ_LENS]
    offsets = [0]
    for s in seqs:
        offsets.append(offsets[-1] + len(s))
    return seqs, offsets


# ---- reference computations (any dtype; run in float64 for the fixture, fp32 for the tolerance estimate) --------

def lm_logits(model, seqs):
    return [model(input_ids=torch.tensor([s])).logits[0] for s in seqs]


def token_logps(logits, seqs):
    out = []
    for lg, s, pl in zip(logits, seqs, PROMPT_LENS):
        lp = F.log_softmax(lg, dim=-1)
        tgt = torch.tensor(s[pl:])
        out.append(lp[pl - 1:len(s) - 1].gather(1, tgt[:, None])[:, 0])
    return out


def rm_scores(model, seqs):
    # transformers pools at the last non-pad token; no token is PAD, so that is the sequence's last token.
    return torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])


def pair_h(seq_lp, ref_c, ref_r, dtype):
    pc, pr = seq_lp[CHOSEN], seq_lp[REJECTED]
    return (pc - torch.tensor(ref_c, dtype=dtype)) - (pr - torch.tensor(ref_r, dtype=dtype))


def dpo_loss(model, seqs, ref_c, ref_r):
    dtype = next(model.parameters()).dtype
    seq_lp = torch.stack([t.sum() for t in token_logps(lm_logits(model, seqs), seqs)])
    w = torch.tensor(PAIR_WEIGHTS, dtype=dtype)
    return (w * -F.logsigmoid(BETA * pair_h(seq_lp, ref_c, ref_r, dtype))).sum() / len(CHOSEN)


def ipo_loss(model, seqs, ref_c, ref_r):
    dtype = next(model.parameters()).dtype
    seq_lp = torch.stack([t.sum() for t in token_logps(lm_logits(model, seqs), seqs)])
    w = torch.tensor(PAIR_WEIGHTS, dtype=dtype)
    return (w * (pair_h(seq_lp, ref_c, ref_r, dtype) - 1.0 / (2.0 * BETA)) ** 2).sum() / len(CHOSEN)


def sft_loss(model, seqs):
    tl = token_logps(lm_logits(model, seqs), seqs)
    n_tok = sum(len(t) for t in tl)
    return -sum(w * t.sum() for w, t in zip(SEQ_WEIGHTS, tl)) / n_tok


def bt_loss(model, seqs):
    dtype = next(model.parameters()).dtype
    s = rm_scores(model, seqs)
    w = torch.tensor(PAIR_WEIGHTS, dtype=dtype)
    return (w * -F.logsigmoid(s[CHOSEN] - s[REJECTED])).sum() / len(CHOSEN)


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    # named_parameters() lists a tied embedding once, so its gradient holds the lm_head contribution too.
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def adamw_steps(model, loss_fn):
    model = copy.deepcopy(model)
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"])
    losses, norms = [], []
    for _ in range(N_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), ADAMW["max_grad_norm"]).item())
        opt.step()
        losses.append(loss.item())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return params, losses, norms


def reference(model, seqs, case, ref_c, ref_r):
    """All expected tensors for one case, in the model's dtype."""
    dtype = next(model.parameters()).dtype
    out = {}
    if case.endswith("_rm"):
        with torch.no_grad():
            out["scores"] = rm_scores(model, seqs)
        loss_fn = lambda m: bt_loss(m, seqs)
        loss, grads = grads_of(model, loss_fn)
        out["bt_loss"] = loss.reshape(1)
        out.update({"bt_grad/" + n: g for n, g in grads.items()})
    else:
        with torch.no_grad():
            logits = lm_logits(model, seqs)
            tl = token_logps(logits, seqs)
            out["logits"] = torch.cat(logits)
            out["token_logps"] = torch.cat(tl)
            out["seq_logps"] = torch.stack([t.sum() for t in tl])
            out["ipo_loss"] = ipo_loss(model, seqs, ref_c, ref_r).reshape(1)
        loss_fn = lambda m: dpo_loss(m, seqs, ref_c, ref_r)
        loss, grads = grads_of(model, loss_fn)
        out["dpo_loss"] = loss.reshape(1)
        out.update({"dpo_grad/" + n: g for n, g in grads.items()})
        if case in ("gpt2", "llama"):
            loss, grads = grads_of(model, lambda m: sft_loss(m, seqs))
            out["sft_loss"] = loss.reshape(1)
            out.update({"sft_grad/" + n: g for n, g in grads.items()})
    params, losses, norms = adamw_steps(model, loss_fn)
    out.update({"after3/" + n: p for n, p in params.items()})
    out["step_losses"] = torch.tensor(losses, dtype=dtype)
    out["step_grad_norms"] = torch.tensor(norms, dtype=dtype)
    return out


def rel_err(name, a, b):
    """The native test's per-tensor metric: max|a - b| / (max|b| + 1e-6). Like the test, it leaves out GPT-2's key
    bias after updates: its gradient is exactly zero (softmax ignores a shift shared by all keys of a query), so in
    fp32 it is rounding noise that AdamW's m / sqrt(v) turns into steps of up to lr."""
    a, b = a.double(), b.double()
    if name.startswith("after3/") and name.endswith("attn.c_attn.bias"):
        d = a.numel() // 3
        a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
    return ((a - b).abs().max() / (b.abs().max() + 1e-6)).item()


def build_mm_case(seed):
    """gemma3_mm: a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration, a tiny SigLIP vision tower) whose
    language model optune loads alone. Its text_config is the gemma3 case's; expected: logits, token_logps and
    seq_logps of the text-only batch through the whole multimodal model (float64), the only quantities checked."""
    torch.manual_seed(seed)
    text = make_model("gemma3").config
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                    boi_token_index=1000, eoi_token_index=1001, image_token_index=1002)
    cfg._attn_implementation = "eager"
    model = transformers.Gemma3ForConditionalGeneration(cfg).float().eval()
    randomize(model, seed)
    seqs, offsets = make_batch(seed + 1)
    d = os.path.join(OUT, "gemma3_mm")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = lm_logits(m64, seqs)
        tl = token_logps(logits, seqs)
    expected = {"logits": torch.cat(logits), "token_logps": torch.cat(tl),
                "seq_logps": torch.stack([t.sum() for t in tl])}
    expected = {k: v.to(torch.float32).contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})
    spec = {"tokens": [t for s in seqs for t in s], "offsets": offsets, "prompt_lens": PROMPT_LENS}
    with open(os.path.join(d, "case.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in spec.items()) + "\n}\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"gemma3_mm: {sum(p.numel() for p in model.parameters())} params, {size / 1024:.0f} KiB")
    return size


def build_case(case, seed):
    if case == "gemma3_mm":
        return build_mm_case(seed)
    torch.manual_seed(seed)
    model = make_model(case)
    randomize(model, seed)
    seqs, offsets = make_batch(seed + 1)
    d = os.path.join(OUT, case)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")  # written for LMs; not part of what the engine reads
    if os.path.exists(gen):
        os.remove(gen)

    m64 = copy.deepcopy(model).double()
    ref_c = ref_r = None
    if not case.endswith("_rm"):
        # Reference log-probs near the policy's own (float64 sequence log-probs plus fixed offsets), as fp32 values.
        with torch.no_grad():
            seq_lp = [t.sum().item() for t in token_logps(lm_logits(m64, seqs), seqs)]
        ref_c = [f32(seq_lp[i] + o) for i, o in zip(CHOSEN, REF_OFFSETS[0])]
        ref_r = [f32(seq_lp[i] + o) for i, o in zip(REJECTED, REF_OFFSETS[1])]

    exp64 = reference(m64, seqs, case, ref_c, ref_r)
    expected = {k: v.to(torch.float32).contiguous() for k, v in exp64.items()}
    save_file(expected, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    spec = {"tokens": [t for s in seqs for t in s], "offsets": offsets, "prompt_lens": PROMPT_LENS,
            "chosen": CHOSEN, "rejected": REJECTED, "pair_weights": PAIR_WEIGHTS, "seq_weights": SEQ_WEIGHTS,
            "beta": BETA, "adamw": ADAMW}
    if ref_c is not None:
        spec["ref_chosen"], spec["ref_rejected"] = ref_c, ref_r
    with open(os.path.join(d, "case.json"), "w") as f:  # one key per line, arrays kept on their line
        f.write("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in spec.items()) + "\n}\n")

    # How close plain fp32 PyTorch gets to the float64 reference: the tolerance an fp32 engine can expect.
    exp32 = reference(copy.deepcopy(model), seqs, case, ref_c, ref_r)
    worst = max(exp32, key=lambda k: rel_err(k, exp32[k], exp64[k]))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    summary = [f"{case}: {sum(p.numel() for p in model.parameters())} params, {len(expected)} tensors, "
               f"{size / 1024:.0f} KiB"]
    for k in ("dpo_loss", "ipo_loss", "sft_loss", "bt_loss"):
        if k in exp64:
            summary.append(f"{k}={exp64[k].item():.6f}")
    summary.append(f"grad norms={[round(x, 4) for x in exp64['step_grad_norms'].tolist()]}")
    summary.append(f"fp32 vs fp64 worst: {worst} {rel_err(worst, exp32[worst], exp64[worst]):.2e}")
    print("\n  ".join(summary))
    return size


CASES = ["gpt2", "llama", "qwen2", "gpt2_rm", "llama_rm", "qwen3", "qwen3_rm", "gemma3", "gemma3_rm", "llama_rope",
         "smollm3", "olmo2", "mistral", "mistral_rm", "smollm3_rm", "olmo2_rm", "gemma3_mm", "qwen2_rm"]  # appended:
# seeds follow the index


def build_cases(cases, build, first_seed, where):
    """Builds the cases named on the command line (none: all), case i with seed first_seed + 10 i."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    total = 0
    only = set(sys.argv[1:])
    for i, case in enumerate(cases):
        if not only or case in only:
            total += build(case, seed=first_seed + 10 * i)
    print(f"total {total / 1024:.0f} KiB in {where}")


def main():
    build_cases(CASES, build_case, 1000, os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    sys.exit(main())
