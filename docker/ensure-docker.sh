#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install docker.io and debootstrap
# from Debian when missing, start dockerd in the background when it is not running.
# Idempotent; used by tests/support/docker.py and `make docker-engine` (mk/docker.mk).
set -euo pipefail

CACHE="${CELERY_FLEET_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}"
LOG_DIR="$CACHE/logs"
mkdir -p "$LOG_DIR"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  echo "ensure-docker: installing$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >"$LOG_DIR/apt-docker.log" 2>&1
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

echo "ensure-docker: starting dockerd (log: $LOG_DIR/dockerd.log)" >&2
# setsid: the engine outlives this script and the test session that started it.
$SUDO setsid dockerd >"$LOG_DIR/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
exit 1
