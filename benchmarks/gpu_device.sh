#!/usr/bin/env bash
# The GPU benchmark on the device machine (benchmarks/README.md, "The device command"): install the carried
# wheels (benchmarks/wheels/, from benchmarks/fetch_wheels.py) into /tmp/site, then run benchmarks/gpu.py with
# the arguments given; the log goes to $OUT/gpu.log beside the result files.
# Without carried wheels it runs on the device's own packages and the result's environment.lock_mismatch says so.
set -uo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wheels=(benchmarks/wheels/*.whl)
if (( ${#wheels[@]} )); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
else
    echo "WARNING: no wheels in benchmarks/wheels (carry it): using the device's own transformers" >&2
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
python3 benchmarks/gpu.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu.log"
