#!/usr/bin/env bash
# The whole eq-12 head-loss step on CUDA (bench/kd_loss.py --case step: naive per-term logits vs the fused
# chunked passes, torch and Triton KD steps), for the device tool (a lent H100/H200; never CI):
#   run(command="bash bench/gpu_head.sh", carry=[".whl"], timeout_s=420)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 bench/kd_loss.py --case step --device cuda --out "$out/kd_loss_step_cuda.json" 2>&1 | tee "$out/kd_loss_step_cuda.log"
