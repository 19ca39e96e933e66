#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (after loadtest/gpu_wheels.sh's parts have
# been carried there), finishing in under 8 minutes, everything under $OUT:
#
#   bash loadtest/gpu_check.sh                 # on the device: OUT is set by the device tool
#   bash loadtest/gpu_check.sh --cpu-only      # the rehearsal here (OUT=/tmp/... to keep it out
#                                              # of the repository)
#
# Puts the carried wheels together (onnxruntime-gpu comes in byte ranges), installs them into
# /tmp/site (nothing is downloaded), then runs python -m loadtest.gpu_check with a time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/rnnserve-gpu-check.XXXXXX")}
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true OMP_NUM_THREADS=1
export BENTOML_HOME=${BENTOML_HOME:-/tmp/rnnserve-bentoml}
PYTHON=${PYTHON:-python3}
# where the carried parts are: .whl, or a folder earlier calls copied them to (WHEELS=/tmp/parts)
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  mkdir -p /tmp/wheels
  for first in "$WHEELS"/p*/split-*.00; do
    [ -e "$first" ] || continue
    name=$(basename "$first" .00); cat "$WHEELS"/p*/"$name".* > "/tmp/wheels/${name#split-}"
  done
  cp "$WHEELS"/p*/*.whl /tmp/wheels/ 2>/dev/null
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/wheels/*.whl > "$OUT/install.log" 2>&1 \
    || { tail -20 "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 450 "$PYTHON" -m loadtest.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
