#!/usr/bin/env bash
# Build a stand-in for docker.io/library/python:3.11-slim where Docker Hub cannot be reached.
#
#   deploy/container/standin-base.sh            # as root, with podman, runc and debootstrap
#
# BentoML's generated Dockerfile starts FROM python:3.11-slim. This makes an image that answers
# to that name from Debian bookworm itself (whose python3 is 3.11): debootstrap a minimal root
# file system, import it, then add python3, venv, pip and the CA bundle. The host's bundle is
# copied in and pointed at (SSL_CERT_FILE, PIP_CERT): package downloads on some networks pass a
# TLS proxy that only it trusts. Nothing is downloaded from Docker Hub. Takes about 2-3 minutes.
set -euo pipefail
TAG=${STANDIN_TAG:-docker.io/library/python:3.11-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

work=$(mktemp -d "${TMPDIR:-/tmp}/rnnserve-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "stand-in base: debootstrap bookworm (minbase) from $MIRROR"
debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
# what a slim image leaves out: downloaded packages, package lists, documentation and message
# translations; and the dpkg excludes of Debian's slim images (debian:bookworm-slim, which
# python:3.11-slim starts from), so that packages installed later leave them out too
rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
  "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/info/*
find "$work/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
cat > "$work/rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
tar -C "$work/rootfs" -c . | "${PODMAN[@]}" import - localhost/rnnserve-debian-minbase:bookworm > /dev/null

cp "$CA" "$work/ca-certificates.crt"
cat > "$work/Containerfile" <<'CONTAINERFILE'
FROM localhost/rnnserve-debian-minbase:bookworm
COPY ca-certificates.crt /usr/local/share/rnnserve-ca/ca-certificates.crt
ENV SSL_CERT_FILE=/usr/local/share/rnnserve-ca/ca-certificates.crt \
    PIP_CERT=/usr/local/share/rnnserve-ca/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/rnnserve-ca/ca-certificates.crt \
    LANG=C.UTF-8
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-pip ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python \
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip
CMD ["python3"]
CONTAINERFILE
"${PODMAN[@]}" build --network=host "${LIMITS[@]}" -t "$TAG" "$work" > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
echo "stand-in base ready: $TAG ($("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
