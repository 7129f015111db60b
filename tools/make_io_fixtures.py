#!/usr/bin/env python3
"""Checkpoint interop fixtures for the native checkpoint tests, made with the Python reference stack.

Make the fixtures (tiny random models, committed under native/test/fixtures/io/<name>/):
    PY=$(/work/shared/tools/ref-venv.sh /tmp/ref)
    $PY tools/make_io_fixtures.py
Each fixture directory holds what transformers' save_pretrained writes (config.json + model.safetensors, or shards
+ model.safetensors.index.json) and expected.json: for every tensor in the files, its shape, the sum of its values
(as fp32, summed in fp64) and its first value, which native/test/test_checkpoint.cpp compares against.

Verify the reverse direction (optune writes, transformers reads):
    build the native tests, run test_checkpoint (it writes /tmp/optune-io-roundtrip/<arch>/), then
    $PY tools/make_io_fixtures.py /tmp/optune-io-roundtrip/*
For each directory this loads it with AutoModelForCausalLM / AutoModelForSequenceClassification (by the config's
architectures), requires no missing, unexpected or mismatched keys, checks every loaded parameter is bitwise equal
to the tensor in the file (a tied lm_head equal to the embeddings), runs a forward pass, and prints OK.
"""
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, Qwen2Config, Qwen2ForCausalLM)

OUT = Path(__file__).resolve().parent.parent / "native" / "test" / "fixtures" / "io"


def randomize(model, seed):
    # transformers' init leaves biases at 0 and norms at 1, which would hide mix-ups between tensors.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def write_expected(d):
    files = sorted(d.glob("*.safetensors"))
    tensors = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            v = t.to(torch.float32)
            tensors[name] = {
                "shape": list(t.shape),
                "dtype": str(t.dtype).replace("torch.", ""),
                "sum": float(v.to(torch.float64).sum()),
                "first": float(v.flatten()[0]) if v.numel() else 0.0,
            }
    cfg = json.loads((d / "config.json").read_text())
    (d / "expected.json").write_text(json.dumps({"architecture": cfg["architectures"][0], "tensors": tensors},
                                                indent=1, sort_keys=True) + "\n")


def save(model, name, **kw):
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    model.save_pretrained(str(d), **kw)
    write_expected(d)
    return d


def gpt2_config(**kw):
    return GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=1,
                      **kw)


def llama_kw(**kw):
    base = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1)
    base.update(kw)
    return base


def make():
    torch.manual_seed(0)
    save(randomize(GPT2LMHeadModel(gpt2_config()), 1), "gpt2")

    # The layout of the original GPT-2 hub files: no "transformer." prefix, causal-mask buffers, a tied lm_head.
    m = randomize(GPT2LMHeadModel(gpt2_config()), 2)
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v.contiguous()
          for k, v in m.state_dict().items()}
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    for l in range(2):
        sd[f"h.{l}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        sd[f"h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    d = OUT / "gpt2_hub_style"
    d.mkdir(parents=True, exist_ok=True)
    m.config.architectures = ["GPT2LMHeadModel"]
    m.config.save_pretrained(str(d))
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    write_expected(d)

    save(randomize(GPT2ForSequenceClassification(gpt2_config(num_labels=1, pad_token_id=0)), 3).half(),
         "gpt2_rm_fp16")
    save(randomize(LlamaForCausalLM(LlamaConfig(**llama_kw(rope_theta=500000.0, eos_token_id=[1, 2]))), 4),
         "llama_gqa")
    save(randomize(Qwen2ForCausalLM(Qwen2Config(**llama_kw(tie_word_embeddings=True))), 5), "qwen2")
    save(randomize(LlamaForSequenceClassification(LlamaConfig(**llama_kw(attention_bias=True, num_labels=1,
                                                                          pad_token_id=3))), 6), "llama_rm")
    save(randomize(LlamaForCausalLM(LlamaConfig(**llama_kw(head_dim=8, tie_word_embeddings=True))), 7)
         .to(torch.bfloat16), "llama_bf16")
    save(randomize(LlamaForCausalLM(LlamaConfig(**llama_kw())), 8), "llama_sharded", max_shard_size="8KB")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


def verify(d):
    d = Path(d)
    cfg = AutoConfig.from_pretrained(str(d))
    arch = cfg.architectures[0]
    auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModelForCausalLM
    model, info = auto.from_pretrained(str(d), output_loading_info=True)
    assert type(model).__name__ == arch, f"{d}: loaded {type(model).__name__}, config says {arch}"
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), f"{d}: {k}: {info[k]}"
    file = {}
    for f in sorted(d.glob("*.safetensors")):
        file.update(load_file(str(f)))
    sd = model.state_dict()
    for name, t in sd.items():
        src = file.get(name)
        if src is None and name == "lm_head.weight" and cfg.tie_word_embeddings:
            src = file.get("transformer.wte.weight", file.get("model.embed_tokens.weight"))
        assert src is not None, f"{d}: {name} is not in the file"
        assert src.dtype == t.dtype and torch.equal(src, t), f"{d}: {name} differs from the file"
    unused = set(file) - set(sd)
    assert not unused, f"{d}: tensors in the file that the model does not use: {sorted(unused)[:5]}"
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3, 4]]))
    assert torch.isfinite(out.logits).all(), f"{d}: non-finite logits"
    print(f"OK {d}: {arch}, {len(sd)} tensors bitwise equal to the file, logits shape {tuple(out.logits.shape)}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for path in sys.argv[1:]:
            verify(path)
    else:
        make()
