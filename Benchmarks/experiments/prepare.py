#!/usr/bin/env python3
"""Builds the data of the attention experiments (docs/experiments.md) from the King James Version that the Debian
package bible-kjv-text ships (read through the package bible-kjv's `bible` program).

    prepare.py --out DIR [--verses FILE]

DIR/kjv-verses.txt      every verse, one a line, in canonical order (31,102 lines)
DIR/rev/                experiment (a): reverse a verse's words
    tokenizer/          a byte-level BPE tokenizer.json trained on the training verses (1,024 ids with 4 specials),
                        inside a stub LLaMA directory (config.json + a tiny random model.safetensors) that
                        `causal train --init random --model DIR` reads only for its tokenizer (vocabulary size, pad id)
    model.json          the architecture trained from scratch
    train.jsonl         {"input_ids", "labels"} lines: <|bos|> w1 .. wn <|sep|> wn .. w1 <|eos|>, labels -100 on the
    eval.jsonl          prompt (<|bos|> .. <|sep|>) and the token id on the response (wn .. w1 <|eos|>)
DIR/mlm/                experiment (b): masked-LM on the verses
    tokenizer/          a BERT WordPiece tokenizer.json trained on the training verses (2,048 ids)
    model.json          the BERT architecture trained from scratch
    train.jsonl         {"input_ids"} lines ([CLS] .. [SEP], masked afresh each step by causal train, seeded by --seed)
    eval.jsonl          {"input_ids", "labels"} lines masked once here (BERT 80/10/10 at rate 0.15, Python's
                        random.Random(20261207)): every seed and arm is evaluated on exactly these masks

Held out: verse k (0-based, canonical order) is an evaluation verse when k % 25 == 12 (1,244 verses); tokenizers and
training data use only the others. Everything is deterministic: running it twice writes identical files.
Needs the `tokenizers` package (Python).
"""
import argparse
import json
import os
import random
import re
import struct
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EVAL_MOD, EVAL_REM = 25, 12


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_verses(path):
    """Verses from `bible -l100000 gen1:1-rev22:21`: lines '  N text' (chapter headings and blank lines skipped)."""
    if path:
        text = open(path).read()
    else:
        text = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    verses = []
    for line in text.splitlines():
        m = re.match(r"^\s+\d+ (.*\S)\s*$", line)
        if m:
            verses.append(m.group(1))
    if len(verses) != 31102:
        sys.exit(f"prepare.py: expected the 31,102 verses of the KJV, found {len(verses)}")
    return verses


def jsonl(rows):
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)


def save_tokenizer(tok, directory):
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "tokenizer.json.tmp")
    tok.save(tmp)
    os.replace(tmp, os.path.join(directory, "tokenizer.json"))


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, list of floats) written as F32."""
    header, blobs, off = {}, [], 0
    for name, shape, values in tensors:
        b = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


# ---------------------------------------------------------------- (a) reversal

REV_SPECIALS = ["<|pad|>", "<|bos|>", "<|sep|>", "<|eos|>"]


def build_reversal(verses, train_idx, eval_idx, out, n_train, n_eval):
    d = os.path.join(out, "rev")
    tdir = os.path.join(d, "tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=REV_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([verses[i] for i in train_idx], trainer=trainer)
    V = tok.get_vocab_size()
    save_tokenizer(tok, tdir)
    sp = {s: tok.token_to_id(s) for s in REV_SPECIALS}
    # The stub LLaMA directory: causal reads its tokenizer.json (and the special ids below); its weights are unused.
    h, f = 8, 16
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": h,
           "intermediate_size": f, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": True,
           "bos_token_id": sp["<|bos|>"], "eos_token_id": sp["<|eos|>"], "pad_token_id": sp["<|pad|>"]}
    write_atomic(os.path.join(tdir, "config.json"), json.dumps(cfg, indent=1) + "\n")
    rng = random.Random(0)

    def rnd(n):
        return [rng.gauss(0, 0.02) for _ in range(n)]
    L = "model.layers.0."
    write_safetensors(os.path.join(tdir, "model.safetensors"), [
        ("model.embed_tokens.weight", [V, h], rnd(V * h)),
        (L + "self_attn.q_proj.weight", [h, h], rnd(h * h)), (L + "self_attn.k_proj.weight", [h, h], rnd(h * h)),
        (L + "self_attn.v_proj.weight", [h, h], rnd(h * h)), (L + "self_attn.o_proj.weight", [h, h], rnd(h * h)),
        (L + "mlp.gate_proj.weight", [f, h], rnd(f * h)), (L + "mlp.up_proj.weight", [f, h], rnd(f * h)),
        (L + "mlp.down_proj.weight", [h, f], rnd(h * f)),
        (L + "input_layernorm.weight", [h], [1.0] * h), (L + "post_attention_layernorm.weight", [h], [1.0] * h),
        ("model.norm.weight", [h], [1.0] * h)])

    vocab = tok.get_vocab()

    def fragment(verse, rng):
        """The verse's words that are one token each (punctuation stripped), in order, repeats dropped; a window of
        3-8 of them. None when fewer than 3."""
        seen, ids = set(), []
        for w in verse.split():
            w = w.strip(".,;:?!()'\"")
            t = vocab.get("\u0120" + w)
            if w and t is not None and t not in seen:
                seen.add(t)
                ids.append(t)
        if len(ids) < 3:
            return None
        n = min(rng.randint(3, 8), len(ids))
        s = rng.randint(0, len(ids) - n)
        return ids[s:s + n]

    def example(ids):
        prompt = [sp["<|bos|>"]] + ids + [sp["<|sep|>"]]
        resp = ids[::-1] + [sp["<|eos|>"]]
        return {"input_ids": prompt + resp, "labels": [-100] * len(prompt) + resp}

    rng_a = random.Random(1)
    order = list(train_idx)
    rng_a.shuffle(order)
    train, seen = [], set()
    for i in order:
        fr = fragment(verses[i], rng_a)
        if fr:
            train.append(example(fr))
            seen.add(tuple(fr))
        if len(train) == n_train:
            break
    ev = []
    for i in eval_idx:
        fr = fragment(verses[i], rng_a)
        if fr and tuple(fr) not in seen:
            ev.append(example(fr))
        if len(ev) == n_eval:
            break
    if len(train) < n_train or len(ev) < n_eval:
        sys.exit(f"prepare.py: only {len(train)} training / {len(ev)} eval reversal pairs")
    write_atomic(os.path.join(d, "train.jsonl"), jsonl(train))
    write_atomic(os.path.join(d, "eval.jsonl"), jsonl(ev))
    words = {t for e in train for t, l in zip(e["input_ids"], e["labels"]) if l == -100} - set(sp.values())
    arch = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": True, "initializer_range": 0.02}
    write_atomic(os.path.join(d, "model.json"), json.dumps(arch) + "\n")
    scored = sum(sum(1 for l in e["labels"] if l != -100) for e in ev)
    print(f"rev: vocabulary {V}, {len(words)} distinct prompt words, {len(train)} train pairs "
          f"({sum(len(e['input_ids']) for e in train)} tokens), {len(ev)} eval pairs ({scored} scored tokens)")
    print("rev: example:", tok.decode(ev[0]["input_ids"], skip_special_tokens=False))


# ---------------------------------------------------------------- (b) masked-LM

MLM_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_mlm(verses, train_idx, eval_idx, out, n_eval, rate=0.15):
    d = os.path.join(out, "mlm")
    tdir = os.path.join(d, "tokenizer")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=2048, special_tokens=MLM_SPECIALS, show_progress=False,
                                        continuing_subword_prefix="##")
    tok.train_from_iterator([verses[i] for i in train_idx], trainer=trainer)
    # The trainer numbers its initial alphabet in hash-map order, which changes from run to run; WordPiece's greedy
    # longest match does not depend on the ids, so renumber: the specials, then every other token sorted by its string.
    learnt = tok.get_vocab()
    order = MLM_SPECIALS + sorted(t for t in learnt if t not in MLM_SPECIALS)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(order)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(MLM_SPECIALS)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    V = tok.get_vocab_size()
    save_tokenizer(tok, tdir)
    specials = {tok.token_to_id(s) for s in MLM_SPECIALS}
    mask_id = tok.token_to_id("[MASK]")
    train = [{"input_ids": tok.encode(verses[i]).ids} for i in train_idx]
    write_atomic(os.path.join(d, "train.jsonl"), jsonl(train))
    rng = random.Random(20261207)
    normal = [t for t in range(V) if t not in specials]
    ev = []
    for i in eval_idx[:n_eval]:
        ids = tok.encode(verses[i]).ids
        cand = [k for k, t in enumerate(ids) if t not in specials]
        sel = [k for k in cand if rng.random() < rate] or [rng.choice(cand)]
        inp, lab = list(ids), [-100] * len(ids)
        for k in sel:
            lab[k] = ids[k]
            r = rng.random()
            if r < 0.8:
                inp[k] = mask_id
            elif r < 0.9:
                inp[k] = rng.choice(normal)
        ev.append({"input_ids": inp, "labels": lab})
    write_atomic(os.path.join(d, "eval.jsonl"), jsonl(ev))
    longest = max(len(r["input_ids"]) for r in train + ev)
    arch = {"model_type": "bert", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 512, "max_position_embeddings": 192, "type_vocab_size": 2, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": tok.token_to_id("[PAD]"),
            "tie_word_embeddings": True}
    if longest > arch["max_position_embeddings"]:
        sys.exit(f"prepare.py: a verse has {longest} tokens, more than max_position_embeddings")
    write_atomic(os.path.join(d, "model.json"), json.dumps(arch) + "\n")
    scored = sum(sum(1 for l in e["labels"] if l != -100) for e in ev)
    print(f"mlm: vocabulary {V}, {len(train)} train verses ({sum(len(r['input_ids']) for r in train)} tokens, "
          f"longest {longest}), {len(ev)} eval verses ({sum(len(e['input_ids']) for e in ev)} tokens, {scored} masked)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--verses", help="the output of `bible -l100000 gen1:1-rev22:21` (default: run it)")
    ap.add_argument("--rev-train", type=int, default=20000)
    ap.add_argument("--rev-eval", type=int, default=200)
    ap.add_argument("--mlm-eval", type=int, default=600)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    verses = read_verses(a.verses)
    write_atomic(os.path.join(a.out, "kjv-verses.txt"), "\n".join(verses) + "\n")
    eval_idx = [k for k in range(len(verses)) if k % EVAL_MOD == EVAL_REM]
    train_idx = [k for k in range(len(verses)) if k % EVAL_MOD != EVAL_REM]
    build_reversal(verses, train_idx, eval_idx, a.out, a.rev_train, a.rev_eval)
    build_mlm(verses, train_idx, eval_idx, a.out, a.mlm_eval)


if __name__ == "__main__":
    main()
