#!/usr/bin/env bash
# The GPU check, run on a GPU machine (the `device` tool) from what gpu_prepare.sh made:
#
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=590)
#
# Writes to $OUT (else build/gpu-out): nvidia-smi.txt, gpu_check.json and .log (the whole
# GPU path, benchmarks/gpu_check.py), gpu_tests.log (the tests that run only on a GPU).
# Copy gpu_check.json to benchmarks/results/ here afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-out}
mkdir -p "$out"
[ -d .whl ] && [ -d .gpu ] || { echo "error: run benchmarks/gpu_prepare.sh first" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1
export PATH="$PWD/.gpu/bin:$PATH" LD_LIBRARY_PATH="$PWD/.gpu/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

# minilm from the carried bfloat16 weights (as float32: the CPU and the GPU answer for the
# same weights, which is what the parity checks compare).
python3 -c "
from pathlib import Path
from torchport.examples.builders import build_minilm
print(build_minilm(Path('.gpu/examples/minilm.tpa')))
" || exit 1

timeout 420 python3 benchmarks/gpu_check.py --device cuda --examples .gpu/examples \
    --out "$out/gpu_check.json" >"$out/gpu_check.log" 2>&1
echo "gpu_check exit $?"
tail -c 3000 "$out/gpu_check.log"

timeout 140 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/runtime/test_devices.py \
    tests/export/test_export.py::test_an_aoti_export_for_the_gpu_runs_there_and_answers_like_the_cpu \
    >"$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?"
tail -n 15 "$out/gpu_tests.log"
