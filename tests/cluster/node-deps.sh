#!/usr/bin/env bash
# The node's Debian packages: containerd (its own instance, not Docker's), runc, the CNI
# plugins (bridge, host-local, loopback, portmap), and gcc + libc6-dev for the static pause
# binary. Installed with apt only when missing (`cluster.sh up` checks them too).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

packages=(containerd runc containernetworking-plugins gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "${p}" >/dev/null 2>&1 || missing+=("${p}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
log "installing ${missing[*]}"
SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo
mkdir -p "${LOG_DIR}"
${SUDO} apt-get update -qq
DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y -qq --no-install-recommends "${missing[@]}" \
  >"${LOG_DIR}/apt-node.log" 2>&1 || { tail -n 20 "${LOG_DIR}/apt-node.log" >&2; die "apt-get install failed"; }
