"""Masked-LM reference fixtures from transformers' BertForMaskedLM: a tiny random model, a fixed masked batch, its
loss, masked-token logits and every parameter's gradient, in fp32 and float64.

    HF_HUB_OFFLINE=1 python Tests/Fixtures/gen/make_mlm_refs.py OUT_DIR

OUT_DIR: Tests/Fixtures/mlm to regenerate in place. Versions: Tests/Fixtures/gen/requirements.txt. CPU, seeded;
nothing is downloaded.

OUT_DIR/model/  a random BertForMaskedLM (vocabulary 120, hidden 32, 2 layers, 4 heads, intermediate 64, 64
                positions, exact GELU, dropout 0, tied decoder), save_pretrained (model.safetensors without the tied
                cls.predictions.decoder.*, config.json), plus a WordPiece tokenizer.json over the same 120 tokens
                ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then letters, suffix pieces and words) written by the
                `tokenizers` library. LayerNorm weights/biases and the MLM bias are perturbed away from 1/0 so their
                gradients and uses are tested.
OUT_DIR/grads.safetensors  d loss / d every parameter (fp32 run), named as model.named_parameters() names them
                (bert.embeddings.word_embeddings.weight collects the tied decoder's gradient too).
OUT_DIR/grads64.safetensors  the same from the model in float64 (stored as F32).
OUT_DIR/refs.json  the batch (3 sequences of different lengths: input_ids with the masking already applied, labels
                -100 where unscored), loss fp32 / float64, and for every scored position its logits (fp32 and
                float64) over the vocabulary.
transformers computes the batch right-padded with [PAD] and an attention mask; the loss is the mean cross-entropy over
the scored positions (BertForMaskedLM(labels=...)).
"""
import json, os, sys
import torch
import transformers, tokenizers
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

out = sys.argv[1]
torch.set_num_threads(2)
torch.manual_seed(1234)

specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
suffixes = ["##" + c for c in letters]
words = ["the", "cat", "dog", "sat", "on", "mat", "a", "and", "ran", "to", "house", "red", "blue", "big", "small",
         "tree", "bird", "sang", "in", "garden", "sun", "moon", "night", "day", "water", "river", "stone", "hill",
         "green", "old", "new", "man", "woman", "child", "book", "read", "wrote", "long", "short", "road", "walked",
         "under", "over", "light", "dark", "fish", "swam", "sea", "ship", "sailed", "wind", "rain", "snow", "cold",
         "warm", "field", "horse", "of", "with", "was", "is", ".", ","]
vocab = specials + [w for w in words if w not in letters] + letters + suffixes
assert len(vocab) == len(set(vocab)), "duplicate vocabulary entries"
V = len(vocab)

cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, initializer_range=0.1, layer_norm_eps=1e-12, pad_token_id=0,
                 tie_word_embeddings=True)
model = BertForMaskedLM(cfg)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "LayerNorm.weight" in name:
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif "LayerNorm.bias" in name or name.endswith("predictions.bias") or name.endswith(".bias"):
            p.copy_(0.05 * torch.randn_like(p))
model.eval()
mdir = os.path.join(out, "model")
os.makedirs(mdir, exist_ok=True)
model.save_pretrained(mdir, safe_serialization=True)

# Tokenizer: BERT's uncased WordPiece pipeline over `vocab`.
from tokenizers.implementations import BertWordPieceTokenizer
tok = BertWordPieceTokenizer({t: i for i, t in enumerate(vocab)}, lowercase=True)
tok.save(os.path.join(mdir, "tokenizer.json"))

# A fixed batch: ids, then BERT's masking applied by hand (position, replacement) so it is explicit.
CLS, SEP, MASK = 2, 3, 4
g = torch.Generator().manual_seed(99)
lengths = [9, 5, 12]
batch = []
for n in lengths:
    mid = torch.randint(5, V, (n - 2,), generator=g).tolist()
    ids = [CLS] + mid + [SEP]
    labels = [-100] * n
    masked = list(ids)
    # Scored positions: about a third of the inner tokens, at least one; 80/10/10 decided by a draw.
    for i in range(1, n - 1):
        if torch.rand((), generator=g).item() < 0.35 or (i == n - 2 and all(l == -100 for l in labels)):
            labels[i] = ids[i]
            r = torch.rand((), generator=g).item()
            if r < 0.8:
                masked[i] = MASK
            elif r < 0.9:
                masked[i] = int(torch.randint(5, V, (1,), generator=g).item())
    batch.append({"input_ids": masked, "labels": labels, "original_ids": ids})

L = max(lengths)
ids = torch.tensor([b["input_ids"] + [0] * (L - len(b["input_ids"])) for b in batch])
am = torch.tensor([[1] * len(b["input_ids"]) + [0] * (L - len(b["input_ids"])) for b in batch])
lab = torch.tensor([b["labels"] + [-100] * (L - len(b["labels"])) for b in batch])

refs = {"vocab_size": V, "batch": batch, "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__}
for dtype, tag, fname in [(torch.float32, "fp32", "grads.safetensors"), (torch.float64, "fp64", "grads64.safetensors")]:
    m = BertForMaskedLM.from_pretrained(mdir, dtype=dtype)
    m.train()  # dropout is 0, so train() and eval() compute the same
    m.zero_grad()
    res = m(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids), labels=lab)
    res.loss.backward()
    grads = {}
    for name, p in m.named_parameters():
        if p.grad is not None:
            grads[name] = p.grad.detach().to(torch.float32).contiguous()
    save_file(grads, os.path.join(out, fname))
    refs["loss_" + tag] = float(res.loss)
    logits = []
    for b, ex in enumerate(batch):
        for i, y in enumerate(ex["labels"]):
            if y != -100:
                logits.append({"sequence": b, "position": i, "logits": [float(v) for v in res.logits[b, i]]})
    refs["logits_" + tag] = logits
with open(os.path.join(out, "refs.json"), "w") as f:
    json.dump(refs, f)
print("loss fp32", refs["loss_fp32"], "fp64", refs["loss_fp64"], "V", V, "scored", len(refs["logits_fp32"]))
