# Sourced by the GPU scripts (bench/gpu_*.sh): installs the wheels the device image lacks (.whl, carried by the
# device tool) into /tmp/site and sets PYTHONPATH, $out (the device tool's $OUT, else bench/results).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-bench/results}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
