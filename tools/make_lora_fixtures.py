#!/usr/bin/env python3
"""LoRA parity fixtures: PEFT adapters on the parity base models and the values the native engine must reproduce.

Run with the reference venv plus PEFT, after make_parity_fixtures.py (whose fixtures this reads and never writes):
    PY=$(/work/shared/tools/ref-venv.sh /tmp/ref) && $PY -m pip install peft==0.21.0 &&
    $PY tools/make_lora_fixtures.py [CASE...]
Writes native/test/fixtures/parity/lora_<case>/ for the cases gpt2, llama, qwen3, gemma3, smollm3, olmo2, mistral,
qwen2 (or only the ones named):
    adapter_config.json, adapter_model.safetensors   PEFT's own files from save_pretrained (fp32; PEFT's model card
                                                     README.md is deleted). base_model_name_or_path is "../<case>";
                                                     target_modules is written sorted (PEFT's set order varies).
    expected.safetensors                             expected values, fp32 (names below)
The base model is native/test/fixtures/parity/<case>/ (config.json, model.safetensors) and the batch, pairs, weights,
beta and AdamW settings are that case's case.json, all used unchanged.

Adapter: LoraConfig(r=4, lora_alpha=8, lora_dropout=0, bias="none", task_type="CAUSAL_LM"), so PEFT's
scale = lora_alpha / r = 2; a targeted layer computes y = x W^T + b + 2 * (x A^T) B^T with A [r, in], B [out, r].
Targets: gpt2 c_attn, c_proj (attn.c_proj and mlp.c_proj), c_fc, with fan_in_fan_out=True because GPT-2's Conv1D
stores W as [in, out] (A and B keep nn.Linear's layout; only the merge transposes B A); the others q_proj,
k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. Neither the lm_head nor the (tied) embedding is targeted.
PEFT's initial B is zero; every lora_A and lora_B is overwritten with 0.1 N(0, 1) in fp32 from a seeded generator
(in named_parameters order), so the adapter changes the outputs from the start.
Tensor keys in adapter_model.safetensors (<adapter key> below) are PEFT's: "base_model.model." + module name +
".lora_A.weight" / ".lora_B.weight", e.g. base_model.model.transformer.h.0.attn.c_attn.lora_A.weight,
base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight.

Precision as in make_parity_fixtures.py: the reference is the PEFT model (base + adapter, as saved in fp32) cast to
float64, stored rounded to fp32; the script reruns everything in fp32 and prints its distance from the reference.
Semantics: make_parity_fixtures.py's (each sequence alone, results packed in batch order). Names in expected:
    logits, token_logps, seq_logps   with the adapter active
    base_token_logps                 adapter disabled (peft_model.disable_adapter()): the base model's token_logps
    ref_chosen, ref_rejected         [n_pairs] the reference sequence log-probs of the DPO loss: case.json's values
                                     unchanged (the base model's float64 seq_logps + make_parity_fixtures.REF_OFFSETS,
                                     rounded to fp32), i.e. the adapter-disabled model plus fixed offsets
    dpo_loss                         [1] weighted DPO loss of the adapted model against ref_chosen / ref_rejected
    dpo_grad/<adapter key>           its gradient for every lora_A / lora_B (the only trainable tensors)
    after3/<adapter key>             the adapters after 3 AdamW steps of that loss on the batch with case.json's
                                     settings: zero grads, backward, clip_grad_norm_ over the adapters, AdamW over the
                                     adapters, weight decay on all of them (all are matrices); base weights unchanged
    step_losses, step_grad_norms     [3] each step's loss and pre-clip gradient norm
    merged/<base name>               merge_and_unload() of the initial adapter, under the base model's own
                                     state_dict name (e.g. transformer.h.0.attn.c_attn.weight [in, out],
                                     model.layers.0.self_attn.q_proj.weight [out, in]): W + 2 B A (transposed for
                                     Conv1D). Only the targeted weights are stored: the script checks that merging
                                     leaves every other base tensor (biases, norms, embeddings, lm_head) bit-identical
                                     to model.safetensors.
"""
import copy
import json
import os
import shutil
import sys

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_parity_fixtures as base  # noqa: E402

RANK, ALPHA, INIT_STD = 4, 8, 0.1
TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
           "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "smollm3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "olmo2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
CASES = list(TARGETS)  # appended: seeds follow the index


def load_case(case):
    """The base case's batch. The imported reference functions read make_parity_fixtures' module constants, so this
    checks that case.json holds exactly those."""
    with open(os.path.join(base.OUT, case, "case.json")) as f:
        spec = json.load(f)
    expect = {"prompt_lens": base.PROMPT_LENS, "chosen": base.CHOSEN, "rejected": base.REJECTED,
              "pair_weights": base.PAIR_WEIGHTS, "seq_weights": base.SEQ_WEIGHTS, "beta": base.BETA,
              "adamw": base.ADAMW}
    for k, v in expect.items():
        assert spec[k] == v, f"{case}/case.json {k}={spec[k]} differs from make_parity_fixtures' {v}"
    o = spec["offsets"]
    seqs = [spec["tokens"][o[i]:o[i + 1]] for i in range(len(o) - 1)]
    return seqs, spec["ref_chosen"], spec["ref_rejected"]


def load_base(case):
    return transformers.AutoModelForCausalLM.from_pretrained(os.path.join(base.OUT, case), dtype=torch.float32,
                                                             attn_implementation="eager").eval()


def adapter_key(param_name):
    """named_parameters name -> PEFT's saved key: the adapter name ("default") is dropped."""
    return param_name.replace(".default.", ".")


def make_peft(case, seed):
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=TARGETS[case], fan_in_fan_out=case == "gpt2")
    model = peft.get_peft_model(load_base(case), cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))
            else:
                assert not p.requires_grad, name
    return model


def adapter_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {adapter_key(n): p.grad.detach().clone()
                           for n, p in model.named_parameters() if p.requires_grad}


def merged(model):
    """merge_and_unload() of a copy; the base state_dict names of the targeted weights and their merged values."""
    targeted = {n[len("base_model.model."):] + ".weight" for n, m in model.named_modules()
                if isinstance(m, peft.tuners.lora.LoraLayer)}
    sd = copy.deepcopy(model).merge_and_unload().state_dict()
    return {n: t for n, t in sd.items() if n in targeted}, {n: t for n, t in sd.items() if n not in targeted}


def reference(model, seqs, ref_c, ref_r):
    """All expected tensors for one case, in the model's dtype."""
    dtype = next(model.parameters()).dtype
    out = {}
    with torch.no_grad():
        logits = base.lm_logits(model, seqs)
        tl = base.token_logps(logits, seqs)
        out["logits"] = torch.cat(logits)
        out["token_logps"] = torch.cat(tl)
        out["seq_logps"] = torch.stack([t.sum() for t in tl])
        with model.disable_adapter():
            out["base_token_logps"] = torch.cat(base.token_logps(base.lm_logits(model, seqs), seqs))
    out["ref_chosen"] = torch.tensor(ref_c, dtype=dtype)
    out["ref_rejected"] = torch.tensor(ref_r, dtype=dtype)
    loss_fn = lambda m: base.dpo_loss(m, seqs, ref_c, ref_r)
    loss, grads = adapter_grads(model, loss_fn)
    out["dpo_loss"] = loss.reshape(1)
    out.update({"dpo_grad/" + k: g for k, g in grads.items()})
    # base.adamw_steps over the whole model: the frozen base weights never get a gradient, so clip_grad_norm_ and
    # AdamW (both skip parameters whose grad is None) see the adapters only; checked below.
    params, losses, norms = base.adamw_steps(model, loss_fn)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(params[n], p), f"frozen {n} changed"
    out.update({"after3/" + adapter_key(n): p for n, p in params.items() if ".lora_" in n})
    out["step_losses"] = torch.tensor(losses, dtype=dtype)
    out["step_grad_norms"] = torch.tensor(norms, dtype=dtype)
    merged_targets, _ = merged(model)
    out.update({"merged/" + n: t for n, t in merged_targets.items()})
    return out


def build_case(case, seed):
    seqs, ref_c, ref_r = load_case(case)
    model = make_peft(case, seed)
    d = os.path.join(base.OUT, "lora_" + case)
    shutil.rmtree(d, ignore_errors=True)
    cfg = model.peft_config["default"]
    cfg.base_model_name_or_path = "../" + case
    cfg.target_modules = sorted(cfg.target_modules)  # PEFT keeps a set: its order (and the JSON) would vary by run
    model.save_pretrained(d, save_embedding_layers=False)  # "auto" would look the base up on the Hub
    os.remove(os.path.join(d, "README.md"))  # PEFT's model card; not part of the adapter
    saved = load_file(os.path.join(d, "adapter_model.safetensors"))
    lora = {adapter_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    assert saved.keys() == lora.keys() and all(torch.equal(saved[k], lora[k]) for k in saved)
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert not any("lm_head" in k or "wte" in k or "embed_tokens" in k for k in saved)

    m64 = copy.deepcopy(model).double()
    exp64 = reference(m64, seqs, ref_c, ref_r)
    expected = {k: v.to(torch.float32).contiguous() for k, v in exp64.items()}
    save_file(expected, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    # Consistency: the adapter-off log-probs are the base fixture's; case.json's references are those sequences'
    # float64 sums plus REF_OFFSETS; merging leaves the untargeted weights alone and gives the adapted logits.
    base_exp = load_file(os.path.join(base.OUT, case, "expected.safetensors"))
    base_err = base.rel_err("token_logps", expected["base_token_logps"], base_exp["token_logps"])
    assert base_err < 1e-6, base_err
    b_lp = [t.sum().item() for t in exp64["base_token_logps"].split([len(s) - p for s, p in
                                                                     zip(seqs, base.PROMPT_LENS)])]
    assert ref_c == [base.f32(b_lp[i] + o) for i, o in zip(base.CHOSEN, base.REF_OFFSETS[0])]
    assert ref_r == [base.f32(b_lp[i] + o) for i, o in zip(base.REJECTED, base.REF_OFFSETS[1])]
    base_sd = load_file(os.path.join(base.OUT, case, "model.safetensors"))
    _, untouched = merged(m64)
    for n, t in untouched.items():
        if n not in base_sd:  # a tied lm_head is not saved: it is the embedding, checked under that name
            assert n == "lm_head.weight" and model.config.tie_word_embeddings, n
            continue
        assert torch.equal(t.float(), base_sd[n]), n
    merged_model = copy.deepcopy(m64).merge_and_unload()
    with torch.no_grad():
        merged_err = base.rel_err("logits", torch.cat(base.lm_logits(merged_model, seqs)), exp64["logits"])
    assert merged_err < 1e-12, merged_err

    # Reload check: PEFT's own loader on the saved files reproduces the logits.
    reloaded = peft.PeftModel.from_pretrained(load_base(case), d).eval()
    with torch.no_grad():
        reload_err = base.rel_err("logits", torch.cat(base.lm_logits(reloaded, seqs)),
                                  torch.cat(base.lm_logits(model, seqs)))
    assert reload_err == 0.0, reload_err

    exp32 = reference(copy.deepcopy(model), seqs, ref_c, ref_r)
    worst = max(exp32, key=lambda k: base.rel_err(k, exp32[k], exp64[k]))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    shift = (exp64["token_logps"] - exp64["base_token_logps"]).abs().max().item()
    summary = [f"lora_{case}: {len(saved)} adapter tensors ({sum(t.numel() for t in saved.values())} params), "
               f"{len(expected)} expected tensors, {size / 1024:.0f} KiB",
               f"dpo_loss={exp64['dpo_loss'].item():.6f}; max |token_logp - base| = {shift:.3f}",
               f"grad norms={[round(x, 4) for x in exp64['step_grad_norms'].tolist()]}",
               f"base_token_logps vs base fixture: {base_err:.1e}; merged logits vs adapted (fp64): {merged_err:.1e}",
               f"fp32 vs fp64 worst: {worst} {base.rel_err(worst, exp32[worst], exp64[worst]):.2e}"]
    print("\n  ".join(summary))
    return size


def main():
    base.build_cases(CASES, build_case, 3000, f"{os.path.relpath(base.OUT, base.ROOT)}/lora_*")


if __name__ == "__main__":
    sys.exit(main())
