#!/usr/bin/env python3
"""transformers' greedy generations on the Hugging Face test models, for `optune generate`'s parity test.

    PY=$(/work/shared/tools/ref-venv.sh /tmp/ref)
    $PY tools/make_generate_fixtures.py      # writes test/fixtures/hf/generate.json (a few kB, committed)

For each policy fixture of make_hf_fixtures.py and each prompt of its parity.json items (the prompt ids
transformers' tokenizer made): model.generate(do_sample=False, max_new_tokens=12) with the generation_config's EOS ids as stop
tokens, the new token ids (an EOS that ends a response kept, as generate returns it), each token's log-prob under the
model at temperature 1 (log_softmax of the step's logits over the whole vocabulary; a vocabulary padded past the
tokenizer's is drawn from below the tokenizer's size, as optune does), and the smallest gap between the best and second-best
logit over the steps: greedy decoding is only comparable across implementations where no step is a near-tie, so the
test uses the prompts whose gap is >= 1e-3.
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "test", "fixtures", "hf")
MAX_NEW = 12


def main():
    parity = json.load(open(os.path.join(FIX, "parity.json")))
    out = {}
    for name, items in parity["policies"].items():
        d = os.path.join(FIX, name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        gen = GenerationConfig.from_pretrained(d)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        # a vocabulary padded past the tokenizer's (qwen3: 384 rows, 352 tokens): optune never draws the padding ids
        n_tok, n_rows = len(AutoTokenizer.from_pretrained(d)), model.config.vocab_size
        padding = list(range(n_tok, n_rows)) if n_rows > n_tok else None
        cases = []
        for item in items:
            ids = torch.tensor([item["prompt_ids"]])
            with torch.no_grad():
                res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW,
                                     eos_token_id=eos, pad_token_id=gen.pad_token_id, output_logits=True,
                                     return_dict_in_generate=True, top_k=None, top_p=None, temperature=None,
                                     suppress_tokens=padding)
            new = res.sequences[0, ids.shape[1]:].tolist()
            logps, gap = [], float("inf")
            for step, tok in enumerate(new):
                logits = res.logits[step][0].double()
                top2 = torch.topk(logits[:n_tok] if padding else logits, 2).values
                gap = min(gap, float(top2[0] - top2[1]))
                logps.append(float(torch.log_softmax(logits, -1)[tok]))
            cases.append({"prompt_ids": item["prompt_ids"], "token_ids": new, "token_logprobs": logps,
                          "min_top2_gap": gap, "finished": bool(new) and new[-1] in eos})
        out[name] = cases
        print(name, [(len(c["token_ids"]), round(c["min_top2_gap"], 4), c["finished"]) for c in cases])
    with open(os.path.join(FIX, "generate.json"), "w") as f:
        json.dump({"max_new_tokens": MAX_NEW, "policies": out}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
