#!/usr/bin/env python3
"""Fixtures for KQuantTests: quantized blocks and gguf-py's dequantized float32 values.

    python make_kquant_fixtures.py OUT_DIR [GGUF ...]

Writes into OUT_DIR:
  random.bin / random.json  random but valid blocks of every type (random bytes; the fp16 scale fields replaced by
                            finite halves: mostly moderate, some zero, subnormal, negative or large), as rows
  real.bin / real.json      a few rows cut from the given GGUF files' tensors, one or two tensors per type present
Each .json lists entries {name, type, type_name, rows, cols, bytes_offset, bytes_length, values_offset}: the raw
row bytes at bytes_offset in the .bin, and rows * cols float32 (little-endian) values at values_offset, computed by
`gguf.quants.dequantize` (numpy float32) of exactly those bytes.
Needs numpy and gguf (tested with gguf 0.19.0, numpy 2.4).
"""
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

# Byte offsets of the fp16 scale fields inside one block, per type.
HALF_FIELDS = {
    Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.IQ4_NL: [0], Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
RANDOM_TYPES = [Q.Q5_0, Q.Q5_1, Q.IQ4_NL, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def random_half(rng):
    u = rng.random()
    sign = -1.0 if rng.random() < 0.3 else 1.0
    if u < 0.08:
        return np.float16(0.0) * np.float16(sign)             # +-0
    if u < 0.16:
        h = np.uint16(rng.integers(1, 0x400)) | (np.uint16(0x8000) if sign < 0 else np.uint16(0))
        return np.array([h], dtype=np.uint16).view(np.float16)[0]  # subnormal
    if u < 0.24:
        return np.float16(sign * rng.uniform(1.0, 2000.0))      # large
    return np.float16(sign * 2.0 ** rng.uniform(-14, -1))      # moderate


def random_rows(qtype, rows, cols, rng):
    bs, bb = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // bs
    data = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for b in range(nb):
        for off in HALF_FIELDS[qtype]:
            data[b, off:off + 2] = np.array([random_half(rng)], dtype=np.float16).view(np.uint8)
    return data.reshape(rows, cols // bs * bb)


class Writer:
    def __init__(self):
        self.blob = bytearray()
        self.entries = []

    def add(self, name, qtype, raw):
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        bs, bb = gguf.GGML_QUANT_SIZES[qtype]
        rows = raw.shape[0]
        cols = raw.shape[1] // bb * bs
        values = dequantize(raw, qtype).astype(np.float32, copy=False).reshape(rows, cols)
        assert values.dtype == np.float32 and np.isfinite(values).all(), name
        boff = len(self.blob)
        self.blob += raw.tobytes()
        while len(self.blob) % 4:
            self.blob.append(0)
        voff = len(self.blob)
        self.blob += values.astype("<f4").tobytes()
        self.entries.append(dict(name=name, type=int(qtype), type_name=qtype.name, rows=rows, cols=cols,
                                 bytes_offset=boff, bytes_length=int(raw.size), values_offset=voff))

    def write(self, out_dir, stem, meta):
        tmp = os.path.join(out_dir, stem + ".bin.tmp")
        with open(tmp, "wb") as f:
            f.write(self.blob)
        os.replace(tmp, os.path.join(out_dir, stem + ".bin"))
        tmp = os.path.join(out_dir, stem + ".json.tmp")
        with open(tmp, "w") as f:
            json.dump(dict(meta, entries=self.entries), f, indent=1)
            f.write("\n")
        os.replace(tmp, os.path.join(out_dir, stem + ".json"))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(gguf=importlib.metadata.version("gguf"), numpy=np.__version__)

    rng = np.random.default_rng(20261206)
    w = Writer()
    for qtype in RANDOM_TYPES:
        bs, _ = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = (6, 1024) if bs == 256 else (8, 256)
        w.add("random " + qtype.name, qtype, random_rows(qtype, rows, cols, rng))
    w.write(out_dir, "random", meta)

    # Real rows: per file and quantized type, the first tensor whose name matches the earliest preferred key;
    # rows 0, the middle and the last (0 and the last for long rows).
    w = Writer()
    prefer = ["ffn_down", "attn_output", "token_embd", "output.weight", "ffn_gate", "attn_v"]
    for path in sys.argv[2:]:
        reader = gguf.GGUFReader(path)
        base = os.path.basename(path)
        seen = set()
        for key in prefer:
            for t in reader.tensors:
                qt = t.tensor_type
                if key not in t.name or qt in seen or qt not in HALF_FIELDS or len(t.data.shape) != 2:
                    continue
                seen.add(qt)
                data = np.asarray(t.data)  # (rows, row bytes) for quantized tensors
                n = data.shape[0]
                picks = sorted({0, n // 2, n - 1}) if data.shape[1] < 1500 else [0, n - 1]
                w.add(f"{base} {t.name} rows {picks}", qt, data[picks])
    w.write(out_dir, "real", meta)


if __name__ == "__main__":
    main()
