#!/usr/bin/env bash
# Every acceptance check of issue 16 (the CUDA backend) in one run on a GPU machine, in at most 10 minutes, ending
# with one table. Build the binary on a CPU machine (no CUDA needed at build time):
#   swift build -c release --static-swift-stdlib --product causal
#   Benchmarks/cuda-check.sh .build/release/causal [MODEL ...]
# MODEL: GGUF files, model directories or registry names (default: smollm2-135m-instruct and
# qwen2.5-coder-0.5b-instruct, which must already be in the model cache on a machine without network access).
# Per model, `causal check-device --device cuda` (library: Sources/CausalLM/Backends/CUDA/DeviceCheck.swift):
#   - logits of 5 prompts, cuda fp32 weights (--precision reference) vs the CPU reference: max relative diff <= 1e-4;
#     cuda fast path (bf16 weights) vs the CPU reference: reported (the bf16 tolerance is measured, not assumed);
#   - greedy tokens of those prompts (32 each), cuda fp32 = cpu;
#   - 64 prompts generated greedily alone, then in batches of 8 and of 64, left- and right-padded, and with prompts
#     chunked by 7 tokens: every token and every logit bit-identical to the prompt's run alone;
#   - decode tok/s (aggregate) at 1, 8, 64 and 256 sequences, first model only (SmolLM2-135M in the default set).
# Then, if python3 has torch with CUDA and transformers, and HF_MODEL names a Hugging Face directory of the first
# model (e.g. SmolLM2-135M-Instruct), HF `generate` in bf16 at batch 1 and 64 for the speed comparison; else the
# anchor of issue 16 is printed (HF bf16 on an H100: 12.7 tok/s at batch 1, 2,452 tok/s at batch 256).
# Environment: CHECK_DEVICE (cuda; cpu runs the same checks on the CPU, to try the script), CHECK_PROMPTS (64), CHECK_TOKENS (16), CHECK_SEQUENCES (1,8,64,256), HF_MODEL, HF_TOKENS (64).
# Exit status: 1 if any check failed (or the binary could not open the GPU: "no CUDA device ..." is printed).
set -uo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 CAUSAL_BINARY [MODEL ...]" >&2; exit 2; fi
bin=$1; shift
[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 2; }
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
status=0

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
echo "== causal check-device --device cuda"
first=1
for m in "${models[@]}"; do
    seqs=""
    [ $first = 1 ] && seqs=${CHECK_SEQUENCES:-1,8,64,256}
    first=0
    left=$(( 570 - ($(date +%s) - start) ))
    if [ $left -lt 30 ]; then echo "time budget spent before $m" >&2; status=1; break; fi
    table="$out/table-$(basename "$m").md"
    timeout "$left" "$bin" check-device --device "${CHECK_DEVICE:-cuda}" --model "$m" --prompts "${CHECK_PROMPTS:-64}" \
        --tokens "${CHECK_TOKENS:-16}" --sequences "$seqs" > "$table"
    rc=$?
    [ $rc -ne 0 ] && status=1
    [ $rc -eq 124 ] && echo "$m: timed out after $left s" >&2
    if [ $rc -ne 0 ] && ! grep -q FAIL "$table"; then
        [ -s "$table" ] || printf '| check | value | limit | result |\n|---|---|---|---|\n' > "$table"
        echo "| $(basename "$m"): check-device exited $rc (its error is above) | | | FAIL |" >> "$table"
    fi
done

hf_rows=""
if [ -n "${HF_MODEL:-}" ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
    left=$(( 590 - ($(date +%s) - start) ))
    if [ $left -gt 20 ]; then
        echo "== HF generate bf16 ($HF_MODEL)"
        hf_rows=$(timeout "$left" python3 - "$HF_MODEL" "${HF_TOKENS:-64}" <<'PY'
import sys, time, torch
from transformers import AutoModelForCausalLM
path, new = sys.argv[1], int(sys.argv[2])
try:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
except TypeError:   # transformers before the dtype argument
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
model = model.cuda().eval()
g = torch.Generator().manual_seed(0)
for batch in (1, 64):
    ids = torch.randint(1, 5000, (batch, 32), generator=g).cuda()
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    model.generate(input_ids=ids, attention_mask=mask, **kw)   # warm-up
    torch.cuda.synchronize(); t = time.time()
    model.generate(input_ids=ids, attention_mask=mask, **kw)
    torch.cuda.synchronize()
    print(f"| HF generate bf16, {batch} sequences (pp32+tg{new}) | {batch * new / (time.time() - t):.1f} | | - |")
PY
)
    fi
fi

echo
echo "| check | value | limit | result |"
echo "|---|---|---|---|"
for f in "$out"/table-*.md; do [ -f "$f" ] && tail -n +3 "$f"; done
if [ -n "$hf_rows" ]; then echo "$hf_rows"; else
    echo "| HF generate bf16, 1 sequence (issue 16 anchor, H100; not rerun here) | 12.7 | | - |"
    echo "| HF generate bf16, 256 sequences (issue 16 anchor, H100; not rerun here) | 2452 | | - |"
fi
echo
echo "total $(( $(date +%s) - start )) s; exit $status"
exit $status
