"""Tiny random-weight Hugging Face models (GPT-2, LLaMA, T5, BERT) and their reference outputs, for the parity tests.

    python Tests/Fixtures/gen/make_tiny.py OUT_DIR        (OUT_DIR: Tests/Fixtures/tiny to regenerate in place)

Versions: Tests/Fixtures/gen/requirements.txt. CPU, fp32, nothing downloaded. Adapted from the project's shared
reference generator (shared/refs/gen/make_tiny.py), with one addition: `t5/logits_float64.json`, the T5 logits of
`logits_single` evaluated by transformers itself in float64 (see `t5_float64` below), an oracle independent of
CausalLM's code. Each model directory gets config.json + generation_config.json + model.safetensors
(save_pretrained) and refs.json.
"""
import json, math, os, sys
import torch, transformers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          T5Config, T5ForConditionalGeneration, BertConfig, BertModel)

out = sys.argv[1]
torch.set_num_threads(2)
V = 1000
rows = [[5, 17, 99, 3, 42, 7, 250], [11, 12, 13], [600, 1, 999, 45, 45]]


def pad_left(rs, pad):
    L = max(map(len, rs))
    return (torch.tensor([[pad] * (L - len(r)) + r for r in rs]),
            torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rs]))


def decoder_refs(name, model, pad):
    model.eval()
    d = f"{out}/{name}"
    model.save_pretrained(d, safe_serialization=True)
    ids, am = pad_left(rows, pad)
    ref = {"rows": rows, "pad_id": pad,
           "note": "padded batch is left padded; position_ids = cumsum(mask)-1 clamped at 0, as HF generate does"}
    with torch.no_grad():
        ref["logits_single"] = [model(torch.tensor([r])).logits[0].tolist() for r in rows]
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        ref["logits_padded_batch"] = model(input_ids=ids, attention_mask=am, position_ids=pos).logits.tolist()
        ref["greedy_single"] = [
            model.generate(torch.tensor([r]), attention_mask=torch.ones(1, len(r), dtype=torch.long), max_new_tokens=16,
                           min_new_tokens=16, do_sample=False, pad_token_id=pad)[0, len(r):].tolist() for r in rows]
        g = model.generate(ids, attention_mask=am, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=pad)
        ref["greedy_padded_batch"] = g[:, ids.shape[1]:].tolist()
    # SFT: the first 2 tokens of each row are the prompt (-100), the rest scored; right padding with -100.
    L = max(map(len, rows))
    inp = torch.tensor([r + [pad] * (L - len(r)) for r in rows])
    amr = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    lab = torch.tensor([[-100, -100] + r[2:] + [-100] * (L - len(r)) for r in rows])
    model.train(); model.zero_grad()
    loss = model(input_ids=inp, attention_mask=amr, labels=lab).loss
    loss.backward()
    gn = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
    ref["sft"] = {"input_ids": [r for r in rows], "labels": [[-100, -100] + r[2:] for r in rows],
                  "loss": float(loss), "grad_norm": gn}
    json.dump(ref, open(f"{d}/refs.json", "w"))


torch.manual_seed(1)
decoder_refs("gpt2", GPT2LMHeadModel(GPT2Config(
    vocab_size=V, n_positions=128, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2,
    resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=1)), pad=2)
torch.manual_seed(2)
decoder_refs("llama", LlamaForCausalLM(LlamaConfig(
    vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, tie_word_embeddings=False,
    initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=2)), pad=2)

# T5 (relu, tied head, initializer_factor 8: logits reach +-250)
torch.manual_seed(3)
t5 = T5ForConditionalGeneration(T5Config(
    vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
    initializer_factor=8.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
d = f"{out}/t5"
t5.save_pretrained(d, safe_serialization=True)
ref = {"encoder_rows": rows, "pad_id": 0,
       "note": "encoder batch right padded with attention mask; decoder starts at decoder_start_token_id 0"}
with torch.no_grad():
    L = max(map(len, rows))
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    am = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    dec = [[0, 7, 8, 9]] * 3
    ref["decoder_input_ids"] = dec
    ref["logits_single"] = [t5(input_ids=torch.tensor([r]), decoder_input_ids=torch.tensor([dec[0]])).logits[0].tolist()
                            for r in rows]
    ref["greedy_single"] = [t5.generate(torch.tensor([r]), max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, 1:].tolist()
                            for r in rows]
    ref["greedy_padded_batch"] = t5.generate(ids, attention_mask=am, max_new_tokens=16, min_new_tokens=16,
                                             do_sample=False)[:, 1:].tolist()
t5.train(); t5.zero_grad()
lab = torch.tensor([[7, 8, 9, 1]] * 3)
loss = t5(input_ids=ids, attention_mask=am, labels=lab).loss
loss.backward()
ref["sft"] = {"labels": lab.tolist(), "loss": float(loss),
              "grad_norm": math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in t5.parameters() if p.grad is not None))}
json.dump(ref, open(f"{d}/refs.json", "w"))


def t5_float64(directory, refs):
    """transformers' own T5 in float64: the checkpoint loaded with dtype=float64, with T5LayerNorm's variance (which
    transformers computes in float32 whatever the input dtype) computed in float64 instead; nothing else changed."""
    from transformers.models.t5 import modeling_t5

    def forward64(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    original = modeling_t5.T5LayerNorm.forward
    modeling_t5.T5LayerNorm.forward = forward64
    try:
        m = T5ForConditionalGeneration.from_pretrained(directory, dtype=torch.float64).eval()
        with torch.no_grad():
            logits = [m(input_ids=torch.tensor([r]), decoder_input_ids=torch.tensor([dec])).logits[0].tolist()
                      for r, dec in zip(refs["encoder_rows"], refs["decoder_input_ids"])]
    finally:
        modeling_t5.T5LayerNorm.forward = original
    return logits


f64 = t5_float64(d, ref)
hf_vs_f64 = max(abs(a - b) for r32, r64 in zip(ref["logits_single"], f64) for p32, p64 in zip(r32, r64) for a, b in zip(p32, p64))
json.dump({"decoder_input_ids": ref["decoder_input_ids"], "logits_single": f64,
           "made_by": "Tests/Fixtures/gen/make_tiny.py: transformers T5ForConditionalGeneration in float64 "
                      "(T5LayerNorm variance in float64)",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "hf_fp32_vs_float64_max_abs": hf_vs_f64}, open(f"{d}/logits_float64.json", "w"))
print("t5: HF fp32 vs float64 max |diff|", hf_vs_f64)

# transformers' relative-position buckets (T5Attention._relative_position_bucket), for the configurations the tests
# use: 32 buckets / max distance 128 (tiny/t5, T5's default) and 8 / 12 (T5TrainingTests' random models), relative
# position key - query from -200 to 200, bidirectional (encoder) and not (decoder).
from transformers.models.t5.modeling_t5 import T5Attention
rel = torch.arange(-200, 201)
tables = []
for nb, md in [(32, 128), (8, 12)]:
    for bi in [True, False]:
        tables.append({"num_buckets": nb, "max_distance": md, "bidirectional": bi, "first_relative_position": -200,
                       "buckets": T5Attention._relative_position_bucket(rel, bidirectional=bi, num_buckets=nb,
                                                                        max_distance=md).tolist()})
json.dump({"made_by": "Tests/Fixtures/gen/make_tiny.py: transformers T5Attention._relative_position_bucket",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "tables": tables},
          open(f"{out}/t5/relative_buckets.json", "w"))

# BERT
torch.manual_seed(4)
bert = BertModel(BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            max_position_embeddings=128, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
                            initializer_range=0.2)).eval()
d = f"{out}/bert"
bert.save_pretrained(d, safe_serialization=True)
with torch.no_grad():
    L = max(map(len, rows))
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    am = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    ref = {"rows": rows, "pad_id": 0,
           "last_hidden_single": [bert(torch.tensor([r])).last_hidden_state[0].tolist() for r in rows],
           "last_hidden_padded_batch_valid_rows": [bert(input_ids=ids, attention_mask=am).last_hidden_state[i, :len(r)].tolist()
                                                   for i, r in enumerate(rows)]}
json.dump(ref, open(f"{d}/refs.json", "w"))
print("ok", torch.__version__, transformers.__version__)
