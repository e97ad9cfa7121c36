# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings for tests/cluster/*.sh: pinned versions and cache paths.
# Sourced, not executed.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_DIR}/../.." && pwd)"

# ---- pinned versions (all built from source through the Go module proxy) ----
HELM_VERSION="v3.22.0"            # latest helm v3 on the proxy
KUBECONFORM_VERSION="v0.8.0"
KWOK_VERSION="v0.8.0"             # kwok/kwokctl; supports Kubernetes up to 1.36
# etcd server: the release Kubernetes ${K8S_VERSION} pins (its go.mod); tests/cluster/etcd-build/go.mod
ETCD_VERSION="$(awk '$1=="require" {$1=""; $0=$0} $1=="go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "${CLUSTER_DIR}/etcd-build/go.mod")"
# Kubernetes: single source of truth is the wrapper module (gen-k8s-mod.sh vX.Y.Z).
K8S_VERSION="$(awk '$1=="require" {$1=""; $0=$0} $1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "${CLUSTER_DIR}/k8s-build/go.mod")"

# ---- cache layout ----
CACHE_DIR="${CELERY_FLEET_CACHE:-${REPO_ROOT}/.cache}"
BIN_DIR="${CACHE_DIR}/bin"
LOG_DIR="${CACHE_DIR}/logs"

HELM_DIR="${BIN_DIR}/helm-${HELM_VERSION}"
KUBECONFORM_DIR="${BIN_DIR}/kubeconform-${KUBECONFORM_VERSION}"
KWOK_DIR="${BIN_DIR}/kwok-${KWOK_VERSION}"
K8S_DIR="${BIN_DIR}/k8s-${K8S_VERSION}"
ETCD_DIR="${BIN_DIR}/etcd-${ETCD_VERSION}"

HELM_BIN="${HELM_DIR}/helm"
KUBECONFORM_BIN="${KUBECONFORM_DIR}/kubeconform"
KWOK_BIN="${KWOK_DIR}/kwok"
KWOKCTL_BIN="${KWOK_DIR}/kwokctl"
KUBE_APISERVER_BIN="${K8S_DIR}/kube-apiserver"
KUBE_CONTROLLER_MANAGER_BIN="${K8S_DIR}/kube-controller-manager"
KUBE_SCHEDULER_BIN="${K8S_DIR}/kube-scheduler"
KUBECTL_BIN="${K8S_DIR}/kubectl"
# Default: etcd built from source. ETCD_BIN=/usr/bin/etcd uses Debian 12's etcd
# 3.4.23 instead, which lacks RequestWatchProgress (see README).
ETCD_BIN="${ETCD_BIN:-${ETCD_DIR}/etcd}"

# ---- cluster ----
CLUSTER_NAME="${CLUSTER_NAME:-celery-fleet-e2e}"
KWOK_WORKDIR="${CACHE_DIR}/kwok"                       # kwokctl's --workdir
CLUSTER_HOME="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"
KUBECONFIG_PATH="${CLUSTER_HOME}/kubeconfig.yaml"      # written by kwokctl

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
