#!/usr/bin/env bash
# The whole product end to end on images that ship inside scikit-learn and scikit-image: train two
# small encoders, evaluate, index, query and dedup, write the pages and plots. About two minutes on a
# 2-core CPU; a CUDA GPU is used when present. Creates .venv on first use, like scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[demo,pretrained]"
exec .venv/bin/siamsearch demo --out runs/demo "$@"
