#!/usr/bin/env bash
# Build the service's OCI image with podman from BentoML's generated Dockerfile.
#
#   deploy/container/build.sh cpu     # localhost/rnnserve:cpu      (bentofile.yaml)
#   deploy/container/build.sh gpu     # localhost/rnnserve:gpu      (bentofile-gpu.yaml)
#   deploy/container/build.sh bare    # localhost/bare-bentoml:cpu  (a bare BentoML service,
#                                     #   loadtest/bare_bentoml: the start-up baseline)
#
# Steps: build the bento (BENTOML_HOME, default ./.bentoml), make sure its base image
# (python:3.11-slim) is there - pulled, or where Docker Hub cannot be reached, the stand-in
# built by standin-base.sh, which this says - then `podman build` in the bento's folder with
# its env/docker/Dockerfile. Prints the image size. Run as root, with podman and runc.
set -euo pipefail
variant=${1:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
context=$root
case "$variant" in
  cpu) bentofile=bentofile.yaml ;;
  gpu) bentofile=bentofile-gpu.yaml ;;
  bare)  # BentoML reads a template only from inside the build context: a copy with ours
    context=$(mktemp -d "${TMPDIR:-/tmp}/bare-bentoml.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    cp "$root"/loadtest/bare_bentoml/{service.py,bentofile.yaml} "$here/Dockerfile.j2" "$context/"
    bentofile=bentofile.yaml ;;
  *) echo "usage: $0 cpu|gpu|bare" >&2; exit 2 ;;
esac
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
export BENTOML_HOME=${BENTOML_HOME:-$root/.bentoml}
export BENTOML_DO_NOT_TRACK=true
BENTOML=${BENTOML:-$root/.venv/bin/bentoml}
if [ "$variant" = bare ]; then IMAGE=${IMAGE:-localhost/bare-bentoml:cpu}; fi
IMAGE=${IMAGE:-localhost/rnnserve:$variant}
BASE=docker.io/library/python:3.11-slim

command -v podman > /dev/null || { echo "podman is missing (make container-tools installs it)" >&2; exit 1; }
if ! podman image exists "$BASE"; then
  if podman pull -q "$BASE" > /dev/null 2>&1; then
    echo "base image: pulled $BASE"
  else
    echo "base image: $BASE cannot be pulled here (no route to Docker Hub); building a stand-in"
    "$here/standin-base.sh"
  fi
fi

tag=$(cd "$context" && { "$BENTOML" build -f "$bentofile" --output tag . 2> /dev/null || true; } | sed -n 's/^__tag__://p')
[ -n "$tag" ] || { echo "bentoml build failed:" >&2; (cd "$context" && "$BENTOML" build -f "$bentofile" .) >&2; exit 1; }
# BentoML prints through rich, which wraps a long path at the terminal's width (80 when
# not a terminal): ask for a wide one and join what is left
bento=$(COLUMNS=4096 "$BENTOML" get "$tag" -o path | tr -d '\n')
[ -d "$bento" ] || { echo "bentoml get $tag -o path gave no folder: $bento" >&2; exit 1; }
echo "bento: $tag ($bento)"
started=$(date +%s)
log=$(mktemp "${TMPDIR:-/tmp}/rnnserve-image.XXXXXX")
podman build --network=host -f "$bento/env/docker/Dockerfile" -t "$IMAGE" "$bento" > "$log" 2>&1 \
  || { tail -40 "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE, $((size / 1000000)) MB, built in $(( $(date +%s) - started )) s"
