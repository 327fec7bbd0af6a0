#!/usr/bin/env bash
# Run the test suite in a project-local virtual environment, creating it on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test,pretrained,formats,cluster]"
exec .venv/bin/python -m pytest -q "$@"
