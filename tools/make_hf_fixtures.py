#!/usr/bin/env python3
"""Hugging Face model, tokenizer and parity fixtures for the TypeScript tests, made with the Python reference stack.

    PY=$(/work/shared/tools/ref-venv.sh /tmp/ref)
    $PY tools/make_hf_fixtures.py            # everything: tokenizers, tiny models, tokenizer cases, log-prob and
                                             # score parity (rewrites every fixture below except optune_saved/)
    $PY tools/make_hf_fixtures.py qwen3 reward_qwen3
                                             # only the named fixture dirs, and only their entries in
                                             # tokenizer_cases.json / parity.json (the other entries are kept as
                                             # they are, byte for byte); use this to add a fixture
    npx tsc -p tsconfig.json && $PY tools/make_hf_fixtures.py roundtrip
                                             # optune trains + saves a checkpoint; transformers loads it, logits

Everything lands in test/fixtures/hf/ (a few hundred kB in all, committed):
  smollm/        LlamaForCausalLM, tied embeddings, byte-level BPE (GPT-2 style), ChatML template, generation_config
                 with one EOS id (the SmolLM2-Instruct layout)
  qwen2/         Qwen2ForCausalLM, Qwen2 tokenizer (byte-level, Qwen regex, NFC), ChatML template inside
                 tokenizer_config.json (the older layout), generation_config with a list of EOS ids
  qwen3/         Qwen3ForCausalLM (per-head q/k RMSNorm; head_dim 16 > hidden/heads = 8, so q is wider than the hidden
                 state as in real Qwen3), tied embeddings, rope_theta 1e6; vocabulary padded past the tokenizer (384
                 rows for 352 tokens, as Qwen's 151936 for 151669); Qwen2Tokenizer (what Qwen3 ships) with eos
                 <|im_end|>, pad <|endoftext|> and <think>/</think> as added non-special tokens; generation_config
                 EOS ids [<|im_end|>, <|endoftext|>]; chat_template.jinja (our own, Qwen3 style): ChatML turns, and
                 with add_generation_prompt and enable_thinking=false an empty reasoning block (<think>, blank line,
                 </think>, blank line) after the assistant header
  (reward models have 512 positions: they read the decoded text of a random policy, which re-tokenizes long)
  reward_llama/  LlamaForSequenceClassification, SentencePiece-like BPE (Metaspace + byte fallback), [INST] template
                 that uses bos_token/eos_token/raise_exception; pad_token_id == eos_token_id, so transformers pools
                 the score before the trailing EOS
  reward_gpt2/   GPT2ForSequenceClassification, plain GPT-2 tokenizer, no chat template
  reward_qwen3/  Qwen3ForSequenceClassification with attention biases (attention_bias true) and head_dim 8 > 16/4;
                 the same tokenizer files and template as qwen3/ (a Qwen3 reward model shares its policy's
                 vocabulary); pad_token_id is <|endoftext|>, not the EOS, so the score is read at the last token
  gemma3/        Gemma3ForCausalLM (model_type gemma3_text): RMSNorms that scale by 1 + weight, post-attention and
                 post-MLP norms, embeddings scaled by sqrt(hidden), GELU-gated MLP; query_pre_attn_scalar 24 != head_dim
                 16; layers sliding / full / sliding with a window of 8 tokens (shorter than the parity sequences) and
                 their own RoPE bases (1e6 full, 1e4 sliding, in rope_parameters by layer type); tied embeddings;
                 512 positions; tokenizer as Gemma's (GemmaTokenizer: spaces normalized to "▁", no prefix space, BPE
                 with byte fallback; <pad> <eos> <bos> <unk> <mask> <start_of_turn> <end_of_turn> as ids 0-6; BOS
                 added); chat_template.jinja (our own, Gemma style): BOS, then per turn <start_of_turn>, the role
                 (the assistant's named "model"), a newline, the text, <end_of_turn> and a newline; a system message
                 has no turn, its text opens the first one; the generation prompt opens a model turn; generation_config
                 EOS ids [<eos>, <end_of_turn>]
  reward_gemma3/ Gemma3TextForSequenceClassification with attention biases (attention_bias true); the same tokenizer
                 files and template as gemma3/; pad_token_id is <pad>, not the EOS, so the score is read at the last
                 token
  mistral/       MistralForCausalLM: Llama without attention biases, every layer attending through a sliding window
                 of 6 tokens (shorter than every parity sequence); untied embeddings; 512 positions; tokenizer as
                 Mistral's converted by transformers (LlamaTokenizer: Metaspace with a prefix space at the text's
                 start, BPE with byte fallback; <unk> <s> </s> [INST] [/INST] as ids 0-4, the last two special as in
                 Mistral's v3 vocabulary; BOS added); chat_template.jinja (our own, [INST] style): BOS, a user turn as
                 "[INST] text [/INST]" (a leading system message's text opens the first one), an assistant turn as
                 " text" and the EOS, turns alternating from a user's; no generation prompt (the assistant's text
                 follows [/INST]); generation_config EOS id </s>
  reward_mistral/
                 MistralForSequenceClassification without a window (sliding_window null, as Mistral 7B v0.2 and
                 later); the same tokenizer files and template as mistral/; no pad_token_id (as Mistral ships), so
                 the score is read at the last token, the template's closing </s>
  tokenizer_cases.json   per tokenizer dir: corpus strings (unicode/whitespace edge cases; for tokenizers with
                         <think> or [INST], a few strings with them too) -> ids with and without special tokens,
                         decoded text;
                         "chats": rendered chat templates and their ids; and, for qwen3 only,
                         "template_arg_chats": chats rendered with extra template variables, each entry as in "chats"
                         plus "template_args" (e.g. {"enable_thinking": false}), the keyword arguments given to
                         transformers' apply_chat_template (optune: HfTokenizerOptions.chatTemplateArgs)
  parity.json            per policy: prompt/response pairs -> ids, per-token and summed log-probs (transformers, fp32;
                         with <think> in the tokenizer, one more chat whose response opens with a reasoning block);
                         per reward model: conversations -> ids and score. A chat response ends with the turn's end
                         token: <end_of_turn> where the tokenizer has it, </s> with [INST] turns, <|im_end|> otherwise
  optune_saved/          (roundtrip) a checkpoint written by optune's EngineModel.save after one SFT step on qwen2/,
                         with expected_logits.json: transformers' logits on it
Weights are random but larger than transformers' init (std 0.02 would make every distribution nearly uniform and the
log-prob parity meaningless).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, Gemma3ForCausalLM,
                          Gemma3TextConfig, Gemma3TextForSequenceClassification, GemmaTokenizer, GPT2Config,
                          GPT2ForSequenceClassification, GPT2Tokenizer, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, LlamaTokenizer, MistralConfig,
                          MistralForCausalLM, MistralForSequenceClassification, Qwen2Config, Qwen2ForCausalLM,
                          Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test" / "fixtures" / "hf"

# Training text for the tiny BPEs: enough for a few dozen merges over common English fragments.
TRAIN_TEXT = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "You are a helpful assistant. Answer the question in one sentence.",
    "What is the capital of France? The capital of France is Paris.",
    "Say hello to the user, then tell them a short story about the sea.",
    "Numbers like 12345 and 3.14 appear in the text too.",
    "Café, naïve, jalapeño and 日本語 are here so unicode gets a few merges.",
] * 4

# Unicode and whitespace edge cases: empty, runs of spaces, tabs, CRLF, NBSP, combining marks, CJK, emoji with
# modifiers and ZWJ, RTL text, digits, contractions, special-token text inside ordinary text.
CORPUS = [
    "",
    " ",
    "Hello world",
    "Hello  world",
    "   leading and trailing   ",
    "tab\tseparated\tvalues",
    "line one\nline two\n\nline four",
    "windows\r\nnewline",
    "  \n  ",
    "non\u00a0breaking space",
    "e\u0301 versus \u00e9",
    "Café naïve jalapeño",
    "日本語のテキスト",
    "emoji 👍🏽 and family 👨\u200d👩\u200d👧",
    "שלום עולם",
    "12345 3.14 1,000,000",
    "don't I'll we've",
    "Hello , world . It 's ok ? n't",
    "!!!???...",
    "aaaaaaaaaaaaaaaaaaaa",
    "The quick brown fox jumps over the lazy dog.",
    "special <|im_end|> inside <s> text </s>",
    "<|im_start|>user\nhi<|im_end|>",
]

# Gemma's special tokens, in Gemma's id order.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

# Qwen3's reasoning markers: added tokens, not special ones. Strings with them, for tokenizers that have them.
THINK_TOKENS = ["<think>", "</think>"]
THINK_CORPUS = [
    "<think>\nLet me see.\n</think>\n\nParis.",
    "a<think>b</think>c <think> </think>",
]
# A policy response that opens with a (short) reasoning block, for policies whose tokenizer has the markers.
THINK_RESPONSE = "<think>\nShort.\n</think>\n\nこんにちは!<|im_end|>"

# Mistral's turn markers: special tokens in its v3 vocabulary (ids 3 and 4). Strings with them, for tokenizers that
# have them.
INST_TOKENS = ["[INST]", "[/INST]"]
INST_CORPUS = [
    "<s>[INST] Hi there [/INST] Hello!</s>[INST] 日本語? [/INST]",
    "a[INST]b[/INST]c [INST]  [/INST]\n",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again, in 日本語?"}],
]

# Our own short templates in the style of the model families (ChatML; Llama-2 [INST]).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>> ' + message['content'] + ' <</SYS>> ' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('unsupported role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)

# Gemma style, written for these fixtures: BOS, then <start_of_turn>ROLE\n...<end_of_turn>\n turns, the assistant's
# role named "model"; a system message has no turn of its own, its text opens the first turn; the generation prompt
# opens a model turn.
GEMMA_TEMPLATE = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_text = messages[0]['content'] + '\\n\\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_text = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
    {%- if message['role'] == 'assistant' %}
        {%- set role = 'model' %}
    {%- elif message['role'] == 'user' %}
        {%- set role = 'user' %}
    {%- else %}
        {{- raise_exception('unsupported role ' + message['role']) }}
    {%- endif %}
    {{- '<start_of_turn>' + role + '\\n' + (system_text if loop.first else '') }}
    {{- message['content'] + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\\n' }}
{%- endif %}
"""

# [INST] style, written for these fixtures (Mistral's turn markers): BOS, then "[INST] text [/INST]" per user turn
# and " text" plus the EOS per assistant turn, alternating from a user turn; a leading system message has no turn of
# its own, its text opens the first user turn; no generation prompt (the assistant's text follows [/INST]).
MISTRAL_TEMPLATE = """\
{{- bos_token }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set preface = messages[0]['content'] + '\\n\\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set preface = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
    {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' %}
    {%- if message['role'] != 'user' and message['role'] != 'assistant' %}
        {{- raise_exception('unsupported role ' + message['role']) }}
    {%- elif message['role'] != expected %}
        {{- raise_exception('turns must alternate user / assistant, from a user turn') }}
    {%- elif message['role'] == 'user' %}
        {{- '[INST] ' + (preface if loop.first else '') + message['content'] + ' [/INST]' }}
    {%- else %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""

# Qwen3 style, written for these fixtures: plain ChatML turns (no default system turn); with add_generation_prompt
# and enable_thinking given as false, the assistant turn opens with an empty reasoning block.
QWEN3_TEMPLATE = """\
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and not enable_thinking %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

LOGPROB_PAIRS = [
    ("Hello world,", " this is a tiny corpus."),
    ("The quick brown", " fox jumps over the lazy dog."),
    ("Café 日本語", " emoji 👍 don't\n\n  spaces"),
]

# Reward-model items: a chat prompt (messages) or a plain-text prompt, and the response text. With a chat template a
# plain prompt becomes one user turn; without one, prompt text and response text are joined.
RM_CHAT_ITEMS = [
    ([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris."),
    ([{"role": "user", "content": "Say hello."}], "Hello! 👋"),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story."}], "Once, the sea."),
]
RM_TEXT_ITEMS = [
    ("What is the capital of France?", " Paris."),
    ("Say hello.", " Hello there, 日本語 friend!\n"),
]


def train_bytelevel(specials, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def train_sentencepiece_like(vocab_size, extra_specials=()):
    # <unk> <s> </s> at ids 0-2, any extra specials next (Mistral's [INST] [/INST] at 3 and 4), then the 256
    # byte-fallback tokens; words start with their space ("▁" + word, also at the text's start) as in Llama 2 and
    # Mistral.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", *extra_specials] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def train_gemma_like(vocab_size):
    # Gemma's specials at Gemma's ids (0-4, then the turn markers), then the 256 byte-fallback tokens. Trained on
    # words that start with their space ("▁" + word, no prefix at the text's start) as SentencePiece pieces do;
    # GemmaTokenizer then runs these merges over the whole normalized text.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    specials = GEMMA_SPECIALS + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    # Gemma's RMSNorms scale by 1 + weight, so its norm weights are drawn around 0 (the same scale as 1 + weight).
    norm_center = 0.0 if isinstance(model.config, Gemma3TextConfig) else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_f.weight" in name:
                p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))
    return model


def fresh_dir(name):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def save_all(d, model, tokenizer, generation=None):
    model.save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    if generation is not None:
        generation.save_pretrained(str(d))


def template_into_config(d):
    # The older layout, still common on the Hub: the template inside tokenizer_config.json, no chat_template.jinja.
    path = d / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = (d / "chat_template.jinja").read_text()
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (d / "chat_template.jinja").unlink()


def make_smollm():
    # smollm: Llama backbone, tied embeddings, byte-level BPE with ChatML specials (as SmolLM2-Instruct).
    vocab, merges = train_bytelevel(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 330)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="<|im_start|>", eos_token="<|im_end|>",
                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML_TEMPLATE
    n = len(tok)
    cfg = LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=10000.0)
    d = fresh_dir("smollm")
    save_all(d, randomize(LlamaForCausalLM(cfg), 1), tok,
             GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2))


def make_qwen2():
    # qwen2: Qwen2's own tokenizer pipeline on a trained byte-level vocab; two EOS ids in generation_config.
    vocab, merges = train_bytelevel(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 340)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_TEMPLATE
    n = len(tok)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen2Config(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                      bos_token_id=eot, eos_token_id=eot, rope_theta=10000.0, use_sliding_window=False)
    d = fresh_dir("qwen2")
    save_all(d, randomize(Qwen2ForCausalLM(cfg), 2), tok,
             GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot))
    template_into_config(d)


def make_reward_llama():
    # reward_llama: a different tokenizer family than either policy, so a reward model must re-tokenize text.
    vocab, merges = train_sentencepiece_like(420)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    tok.chat_template = INST_TEMPLATE
    n = len(tok)
    cfg = LlamaConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, num_labels=1, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    d = fresh_dir("reward_llama")
    save_all(d, randomize(LlamaForSequenceClassification(cfg), 3), tok)


def make_reward_gpt2():
    # reward_gpt2: plain GPT-2 tokenizer, no chat template; prompt and response are joined as text.
    vocab, merges = train_bytelevel(["<|endoftext|>"], 300)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    n = len(tok)
    cfg = GPT2Config(vocab_size=n, n_embd=16, n_layer=2, n_head=2, n_positions=512, num_labels=1, bos_token_id=0,
                     eos_token_id=0, pad_token_id=None)
    d = fresh_dir("reward_gpt2")
    save_all(d, randomize(GPT2ForSequenceClassification(cfg), 4), tok)


def qwen3_tokenizer():
    # As Qwen3 ships it: Qwen2Tokenizer, eos <|im_end|>, pad <|endoftext|>, no bos, and <think> / </think> as added
    # tokens that are not special (so skip_special_tokens keeps them).
    vocab, merges = train_bytelevel(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 350)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok.chat_template = QWEN3_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_end|>"]}
    return tok, ids["<|endoftext|>"], ids["<|im_end|>"]


def make_qwen3():
    # qwen3: Llama block plus per-head q/k RMSNorms; the embedding rows are padded past the tokenizer as in Qwen.
    tok, eot, im_end = qwen3_tokenizer()
    rows = -(-len(tok) // 64) * 64
    cfg = Qwen3Config(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=eot, eos_token_id=im_end, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": 1000000.0},
                      use_sliding_window=False)
    d = fresh_dir("qwen3")
    save_all(d, randomize(Qwen3ForCausalLM(cfg), 5), tok,
             GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot))


def make_reward_qwen3():
    # reward_qwen3: the qwen3 tokenizer and template; biases on q/k/v/o; pad (<|endoftext|>) differs from the EOS.
    tok, eot, im_end = qwen3_tokenizer()
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      num_labels=1, attention_bias=True, bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, use_sliding_window=False)
    d = fresh_dir("reward_qwen3")
    save_all(d, randomize(Qwen3ForSequenceClassification(cfg), 6), tok)


def gemma3_tokenizer():
    # As Gemma 3 ships it: GemmaTokenizer (spaces to "▁", BPE with byte fallback), BOS added, eos <eos>, pad <pad>,
    # the turn markers special (skip_special_tokens drops them).
    vocab, merges = train_gemma_like(420)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}
    assert list(ids.values()) == list(range(len(GEMMA_SPECIALS))), ids
    return tok, ids


def gemma3_config(**kwargs):
    # Layers sliding / full / sliding; the window (8) is shorter than the parity sequences, so it shows; each layer
    # kind has its own RoPE base; query_pre_attn_scalar 24 != head_dim 16, so the attention scale is not head_dim's.
    return Gemma3TextConfig(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        max_position_embeddings=512, tie_word_embeddings=True, **kwargs)


def make_gemma3():
    # gemma3: Gemma 3's text model; two EOS ids (<eos>, <end_of_turn>) in generation_config as Gemma 3 ships them.
    tok, ids = gemma3_tokenizer()
    cfg = gemma3_config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, bos_token_id=ids["<bos>"],
                        eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    d = fresh_dir("gemma3")
    save_all(d, randomize(Gemma3ForCausalLM(cfg), 7), tok,
             GenerationConfig(bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                              pad_token_id=ids["<pad>"]))


def make_reward_gemma3():
    # reward_gemma3: the gemma3 tokenizer and template; biases on q/k/v/o; pad (<pad>) differs from the EOS.
    tok, ids = gemma3_tokenizer()
    cfg = gemma3_config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_labels=1, attention_bias=True,
                        bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    d = fresh_dir("reward_gemma3")
    save_all(d, randomize(Gemma3TextForSequenceClassification(cfg), 8), tok)


def mistral_tokenizer():
    # As transformers 5 converts Mistral's SentencePiece model: LlamaTokenizer (Metaspace, a prefix space at the
    # text's start, BPE with byte fallback), BOS added, eos </s>, no pad; [INST] / [/INST] special (skip_special_tokens
    # drops them), at Mistral v3's ids.
    vocab, merges = train_sentencepiece_like(420, INST_TOKENS)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"additional_special_tokens": INST_TOKENS})
    tok.chat_template = MISTRAL_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<unk>", "<s>", "</s>", *INST_TOKENS]}
    assert list(ids.values()) == list(range(len(ids))), ids
    return tok, ids


def mistral_config(**kwargs):
    # Untied, no attention biases (transformers' Mistral has none); 4 heads of 8 over 2 KV heads.
    return MistralConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
                         max_position_embeddings=512, tie_word_embeddings=False, **kwargs)


def make_mistral():
    # mistral: every layer slides, with a window (6) shorter than the parity sequences, as Mistral 7B v0.1's 4096.
    tok, ids = mistral_tokenizer()
    cfg = mistral_config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, sliding_window=6,
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=None)
    d = fresh_dir("mistral")
    save_all(d, randomize(MistralForCausalLM(cfg), 9), tok,
             GenerationConfig(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"]))


def make_reward_mistral():
    # reward_mistral: the mistral tokenizer and template; no window (null, as Mistral 7B v0.2 and later) and no pad
    # token, so transformers scores at the last token.
    tok, ids = mistral_tokenizer()
    cfg = mistral_config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_labels=1, sliding_window=None,
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=None)
    d = fresh_dir("reward_mistral")
    save_all(d, randomize(MistralForSequenceClassification(cfg), 10), tok)


# Every fixture dir, in the order they are built and listed in the JSON files.
POLICIES = {"smollm": make_smollm, "qwen2": make_qwen2, "qwen3": make_qwen3, "gemma3": make_gemma3,
            "mistral": make_mistral}
REWARD_MODELS = {"reward_llama": make_reward_llama, "reward_gpt2": make_reward_gpt2,
                 "reward_qwen3": make_reward_qwen3, "reward_gemma3": make_reward_gemma3,
                 "reward_mistral": make_reward_mistral}
BUILD_ORDER = ["smollm", "qwen2", "reward_llama", "reward_gpt2", "qwen3", "reward_qwen3", "gemma3", "reward_gemma3",
               "mistral", "reward_mistral"]


def make_models(names):
    builders = {**POLICIES, **REWARD_MODELS}
    for name in names:
        builders[name]()


def render(tok, messages, add_generation_prompt, **template_args):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                   **template_args)


def has_think(tok):
    return all(t in tok.get_vocab() for t in THINK_TOKENS)


def has_inst(tok):
    return all(t in tok.get_vocab() for t in INST_TOKENS)


def turn_end(tok):
    # The token that closes an assistant turn in the fixture's template.
    if "<end_of_turn>" in tok.get_vocab():
        return "<end_of_turn>"
    return tok.eos_token if has_inst(tok) else "<|im_end|>"


def chat_case(name, tok, messages, gen, template_args=None):
    args = template_args or {}
    text = render(tok, messages, gen, **args)
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False, **args)
    assert ids == tok(text, add_special_tokens=False).input_ids, name
    case = {"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids}
    if template_args is not None:
        case["template_args"] = template_args
    return case


def read_json(name, fresh, empty):
    # A partial build adds to (or replaces) its own entries; a full build starts over.
    path = OUT / name
    return empty if fresh or not path.exists() else json.loads(path.read_text())


def make_tokenizer_cases(names, fresh):
    cases = read_json("tokenizer_cases.json", fresh, {})
    for name in names:
        tok = AutoTokenizer.from_pretrained(str(OUT / name))
        entries = []
        for text in CORPUS + (THINK_CORPUS if has_think(tok) else []) + (INST_CORPUS if has_inst(tok) else []):
            ids = tok(text).input_ids
            entries.append({
                "text": text,
                "ids": ids,
                "ids_no_special": tok(text, add_special_tokens=False).input_ids,
                "decoded": tok.decode(ids),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            })
        chats = []
        if tok.chat_template is not None:
            for messages in CHATS:
                if name == "reward_llama" and messages[-1]["role"] != "user":
                    continue
                for gen in (True, False):
                    chats.append(chat_case(name, tok, messages, gen))
        cases[name] = {"corpus": entries, "chats": chats}
        if name == "qwen3":
            cases[name]["template_arg_chats"] = [chat_case(name, tok, messages, True, {"enable_thinking": thinking})
                                                 for messages in CHATS for thinking in (False, True)]
    (OUT / "tokenizer_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")


def response_logprobs(model, prompt_ids, response_ids):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    p = len(prompt_ids)
    return [float(logp[p + i - 1, t]) for i, t in enumerate(response_ids)]


def make_parity(names, fresh):
    parity = read_json("parity.json", fresh, {"policies": {}, "reward_models": {}})
    for name in [n for n in names if n in POLICIES]:
        tok = AutoTokenizer.from_pretrained(str(OUT / name))
        model = AutoModelForCausalLM.from_pretrained(str(OUT / name), dtype=torch.float32).eval()
        items = []
        pairs = [(p, r, None) for p, r in LOGPROB_PAIRS]
        pairs.append((render(tok, CHATS[0], True), "Paris, of course." + turn_end(tok), CHATS[0]))
        if has_think(tok):
            pairs.append((render(tok, CHATS[1], True), THINK_RESPONSE, CHATS[1]))
        for prompt, response, messages in pairs:
            # Chat prompts are rendered text already (the template adds any BOS); plain prompts get special tokens.
            prompt_ids = tok(prompt, add_special_tokens=messages is None).input_ids
            response_ids = tok(response, add_special_tokens=False).input_ids
            token_logps = response_logprobs(model, prompt_ids, response_ids)
            items.append({"prompt": prompt, "response": response, "messages": messages, "prompt_ids": prompt_ids,
                          "response_ids": response_ids, "token_logprobs": token_logps, "logprob": sum(token_logps)})
        parity["policies"][name] = items
    for name in [n for n in names if n in REWARD_MODELS]:
        tok = AutoTokenizer.from_pretrained(str(OUT / name))
        model = AutoModelForSequenceClassification.from_pretrained(str(OUT / name), dtype=torch.float32).eval()
        items = []
        cases = [(None, m, r) for m, r in RM_CHAT_ITEMS] if tok.chat_template is not None else []
        cases += [(p, None, r) for p, r in RM_TEXT_ITEMS]
        for prompt, messages, response in cases:
            if tok.chat_template is not None:
                turns = messages if messages is not None else [{"role": "user", "content": prompt}]
                text = render(tok, turns + [{"role": "assistant", "content": response}], False)
                ids = tok(text, add_special_tokens=False).input_ids
            else:
                text = prompt + response
                ids = tok(prompt).input_ids + tok(response, add_special_tokens=False).input_ids
            with torch.no_grad():
                score = float(model(torch.tensor([ids])).logits[0, 0])
            items.append({"prompt": prompt, "messages": messages, "response": response, "text": text, "ids": ids,
                          "score": score})
        parity["reward_models"][name] = items
    (OUT / "parity.json").write_text(json.dumps(parity, ensure_ascii=False, indent=1) + "\n")


ROUNDTRIP_JS = """
import { EngineModel, packBatch } from %(engine)s;
const model = await EngineModel.load(%(src)s);
// One SFT step with a large learning rate, so the saved weights differ from the transformers-made ones.
const batch = packBatch([{ prompt: [1, 5, 9, 30], response: [40, 41, 42, 2] }, { prompt: [7, 8], response: [100, 3] }]);
await model.trainStep({ loss: "sft", batch, optimizer: { lr: 0.05 } });
await model.save(%(dst)s);
await model.dispose();
"""

ROUNDTRIP_IDS = [[1, 5, 9, 30, 40, 41, 42, 2], [7, 8, 100, 3, 200, 17]]


def make_roundtrip():
    dst = OUT / "optune_saved"
    if dst.exists():
        shutil.rmtree(dst)
    js = ROUNDTRIP_JS % {"engine": json.dumps(str(ROOT / "dist" / "engine" / "index.js")),
                         "src": json.dumps(str(OUT / "qwen2")), "dst": json.dumps(str(dst))}
    subprocess.run(["node", "--input-type=module", "-e", js], check=True, cwd=ROOT)
    model, info = AutoModelForCausalLM.from_pretrained(str(dst), dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"transformers did not load optune's checkpoint cleanly: {bad}")
    before = AutoModelForCausalLM.from_pretrained(str(OUT / "qwen2"), dtype=torch.float32)
    changed = sum(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    assert changed > 0, "the SFT step changed no tensor"
    out = []
    with torch.no_grad():
        for ids in ROUNDTRIP_IDS:
            logits = model.eval()(torch.tensor([ids])).logits[0]
            out.append({"ids": ids, "logits": [[round(float(x), 6) for x in row] for row in logits]})
    (dst / "expected_logits.json").write_text(json.dumps({"tensors_changed": changed, "sequences": out}) + "\n")
    print(f"optune_saved: {changed} tensors changed by the SFT step; transformers loaded it with no key issues")


if __name__ == "__main__":
    torch.manual_seed(0)
    args = sys.argv[1:]
    unknown = [a for a in args if a not in BUILD_ORDER]
    if args == ["roundtrip"]:
        make_roundtrip()
    elif unknown or len(set(args)) != len(args):
        sys.exit(f"usage: make_hf_fixtures.py [roundtrip | NAME...], NAME one of {', '.join(BUILD_ORDER)}")
    else:
        # No names: every fixture, and both JSON files written anew. Names: those dirs, and their JSON entries.
        names = [n for n in BUILD_ORDER if n in args] if args else BUILD_ORDER
        make_models(names)
        make_tokenizer_cases(names, fresh=not args)
        make_parity(names, fresh=not args)
        print(f"built {', '.join(names)}")

