#!/usr/bin/env bash
# The GPU checks, as one script for the device tool (a lent H100/H200; never CI):
#   run(command="bash bench/gpu_smoke.sh", carry=[".whl"], timeout_s=540)
# .whl holds the wheels the GPU image lacks (transformers 5.24, omegaconf, flash-linear-attention, fla-core), made
# here with `pip download --no-deps --only-binary=:all: --python-version 3.12 ...` (see bench/README or the device
# tool's notes). Results go to $OUT (the device tool's folder) or bench/results.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
status=0
python3 bench/gpu_smoke.py --out "$out/gpu_smoke.json" 2>&1 | tee "$out/gpu_smoke.log" || status=1
python3 bench/moe_block.py --device cuda --out "$out/moe_block_cuda.json" 2>&1 | tee "$out/moe_block.log" || status=1
python3 bench/distill_scale.py --device cuda --out "$out/distill_scale_cuda.json" 2>&1 | tee "$out/distill_scale.log" \
    || status=1
exit $status
