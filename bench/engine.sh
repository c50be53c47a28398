#!/usr/bin/env bash
# Engine benchmark: per-step UNet time, VAE decode time and peak RSS while loading, for the tiny test model
# and SD1.5-shaped random weights at 256x256, in candle (ours) and, when /work/venv-ref (or $TORCH_PYTHON)
# has torch + diffusers, in PyTorch diffusers on the same weights, with the ratio.
#   bench/engine.sh [tiny|sd15|all]      (BENCH_DIR: where the weights go, default /tmp/atelier-bench-engine)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${BENCH_DIR:-/tmp/atelier-bench-engine}"
PY="${TORCH_PYTHON:-/work/venv-ref/bin/python}"
SIZE="${BENCH_SIZE:-256}"
cargo build -q --release -p atelier-engine --example bench_engine
BIN="${CARGO_TARGET_DIR:-target}/release/examples/bench_engine"
echo "== Atelier engine benchmark ($(nproc) cores, ${SIZE}x${SIZE}, $(date -u +%Y-%m-%dT%H:%MZ)) =="
for model in tiny sd15; do
  case "${1:-all}" in "$model"|all) ;; *) continue ;; esac
  iters=20; [ "$model" = sd15 ] && iters=3
  ours=$("$BIN" "$model" "$DIR/$model" "$SIZE" "$iters")
  theirs=""
  if [ -x "$PY" ] && "$PY" -c 'import torch, diffusers' >/dev/null 2>&1; then
    theirs=$("$PY" bench/engine_torch.py "$DIR/$model" "$SIZE" "$iters" 2>/dev/null | tail -1)
  fi
  python3 - "$model" "$ours" "$theirs" <<'PY'
import json, sys
model, ours, theirs = sys.argv[1], json.loads(sys.argv[2]), (json.loads(sys.argv[3]) if sys.argv[3] else None)
print(f"-- {model}: weights {ours['weights_mib']:.1f} MiB, load {ours['load_s']:.2f} s, "
      f"peak RSS after load {ours['peak_rss_after_load_mib']:.0f} MiB "
      f"({ours['peak_rss_after_load_mib'] / max(ours['weights_mib'], 1e-9):.2f}x the weights)")
for key, label in [("unet_step_ms", "UNet step (CFG batch 2)"), ("vae_decode_ms", "VAE decode")]:
    line = f"   {label:<24} candle {ours[key]:10.1f} ms"
    if theirs:
        line += f"   torch {theirs[key]:10.1f} ms   ratio candle/torch {ours[key] / theirs[key]:.2f}x"
    print(line)
if theirs:
    print(f"   torch {theirs['torch']} ({theirs['threads']} threads): peak RSS after load "
          f"{theirs['peak_rss_after_load_mib']:.0f} MiB, load {theirs['load_s']:.2f} s")
PY
done
