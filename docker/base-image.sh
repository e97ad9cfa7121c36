#!/usr/bin/env bash
# Make the local base images the tests build on, without any container registry:
#   debootstrap --variant=minbase bookworm  ->  tarball cached under .cache/docker/  ->  docker import
#
#   docker/base-image.sh python    -> image celery-fleet-base:bookworm      (python3, python3-venv)
#   docker/base-image.sh services  -> image celery-fleet-services:bookworm  (redis-server, postgresql)
#
# The python image stands in for the official python:3.11-slim-bookworm (ARG BASE_IMAGE of
# docker/Dockerfile); the services image is what docker/standins/*.Dockerfile build on.
# Tarballs are kept, so a warm run only re-imports (a few seconds) or does nothing.
set -euo pipefail

KIND="${1:-python}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CELERY_FLEET_CACHE:-$ROOT/.cache}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$KIND" in
  python)   IMAGE=celery-fleet-base:$SUITE;     INCLUDE=python3,python3-venv,ca-certificates,tini ;;
  services) IMAGE=celery-fleet-services:$SUITE; INCLUDE=redis-server,postgresql-15,ca-certificates ;;
  *) echo "usage: $0 python|services" >&2; exit 2 ;;
esac

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi

DIR="$CACHE/docker"
TARBALL="$DIR/debian-$SUITE-$KIND.tar.gz"
mkdir -p "$DIR/debs"
if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || "$ROOT/docker/ensure-docker.sh"
  WORK="$(mktemp -d "$DIR/rootfs.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  echo "base-image: debootstrap $SUITE ($KIND) into $WORK" >&2
  debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$DIR/debs" \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$DIR/debootstrap-$KIND.log" 2>&1 \
    || { tail -n 40 "$DIR/debootstrap-$KIND.log" >&2; exit 1; }
  # Slim it like the official slim images: no apt lists, docs or man pages.
  chroot "$WORK/rootfs" apt-get clean
  rm -rf "$WORK/rootfs"/var/lib/apt/lists/* "$WORK/rootfs"/usr/share/doc/* "$WORK/rootfs"/usr/share/man/* \
         "$WORK/rootfs"/var/cache/apt/*.bin "$WORK/rootfs"/var/log/*.log
  tar -C "$WORK/rootfs" --numeric-owner -czf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
echo "base-image: docker import $TARBALL as $IMAGE" >&2
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
