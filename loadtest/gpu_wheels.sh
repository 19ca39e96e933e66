#!/usr/bin/env bash
# Prepare what the GPU machine lacks, as wheels, in parts small enough to carry.
#
#   loadtest/gpu_wheels.sh            # here, with internet: writes .whl/p1, .whl/p2, ...
#
# The GPU machine (Python 3.12, torch, the nvidia-* CUDA 13 wheels, CPU-only onnxruntime 1.30)
# cannot download. A call to it carries the working tree (about 15 MB) and at most 64 MiB in
# all, but onnxruntime-gpu alone is about 300 MB. So the wheels go in folders of at most 44 MiB
# (.whl/pN, ignored by git through .git/info/exclude), onnxruntime-gpu cut into byte ranges,
# each carried by its own call (`carry: [".whl/pN"]`, a trivial command): a warm machine keeps
# what earlier calls brought. loadtest/gpu_check.sh puts them together and installs them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/all
PIP=(python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl/all)
# the service's serving dependencies (bentofile-gpu.yaml) and what the check's clients use
"${PIP[@]}" "onnxruntime-gpu==1.31.1" "bentoml==1.4.39" orjson httptools uvloop aiohttp psutil \
  pydantic-settings
# already on the GPU machine (its image, as listed in the device tool's KINDS.md): left out
for have in numpy pillow nvidia_ protobuf typing_extensions packaging certifi idna urllib3 \
            requests jinja2 markupsafe pyyaml sympy mpmath filelock fsspec networkx; do
  rm -f .whl/all/"$have"*.whl
done
# cut everything into parts of at most 44 MiB
part=1; used=0; limit=$((44 * 1024 * 1024))
mkdir -p .whl/p1
for wheel in .whl/all/*.whl; do
  size=$(stat -c %s "$wheel")
  if [ "$size" -gt "$limit" ]; then  # too big for one call: byte ranges, joined there
    split -b "$limit" -d "$wheel" ".whl/split-$(basename "$wheel")."
    for piece in .whl/split-*; do
      part=$((part + 1)); mkdir -p ".whl/p$part"; mv "$piece" ".whl/p$part/"
    done
    continue
  fi
  if [ $((used + size)) -gt "$limit" ]; then part=$((part + 1)); used=0; mkdir -p ".whl/p$part"; fi
  mv "$wheel" ".whl/p$part/"; used=$((used + size))
done
rm -rf .whl/all
for d in .whl/p*; do echo "$d: $(du -sh "$d" | cut -f1)"; done
echo "carry each .whl/pN in its own call, then run loadtest/gpu_check.sh"
