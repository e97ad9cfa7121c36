# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings for tests/cluster/*.sh: pinned versions, cache paths, the cluster's network.
# Sourced, not executed.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_DIR}/../.." && pwd)"

# ---- pinned versions (all built from source through the Go module proxy) ----
# Kubernetes: single source of truth is the wrapper module (gen-k8s-mod.sh vX.Y.Z).
modver() { awk -v m="$2" '$1=="require" {$1=""; $0=$0} $1==m && $2 ~ /^v/ {print $2; exit}' "$1"; }
K8S_VERSION="$(modver "${CLUSTER_DIR}/k8s-build/go.mod" k8s.io/kubernetes)"
# etcd server: the release Kubernetes ${K8S_VERSION} pins (its go.mod); etcd-build/go.mod
ETCD_VERSION="$(modver "${CLUSTER_DIR}/etcd-build/go.mod" go.etcd.io/etcd/server/v3)"
# CoreDNS: the release kubeadm ${K8S_VERSION} deploys; coredns-build/go.mod
COREDNS_VERSION="$(modver "${CLUSTER_DIR}/coredns-build/go.mod" github.com/coredns/coredns)"

# ---- cache layout ----
CACHE_DIR="${CELERY_FLEET_CACHE:-${REPO_ROOT}/.cache}"
BIN_DIR="${CACHE_DIR}/bin"
LOG_DIR="${CACHE_DIR}/logs"

K8S_DIR="${BIN_DIR}/k8s-${K8S_VERSION}"
ETCD_DIR="${BIN_DIR}/etcd-${ETCD_VERSION}"
COREDNS_DIR="${BIN_DIR}/coredns-${COREDNS_VERSION}"

KUBE_APISERVER_BIN="${K8S_DIR}/kube-apiserver"
KUBE_CONTROLLER_MANAGER_BIN="${K8S_DIR}/kube-controller-manager"
KUBE_SCHEDULER_BIN="${K8S_DIR}/kube-scheduler"
KUBECTL_BIN="${K8S_DIR}/kubectl"
KUBELET_BIN="${K8S_DIR}/kubelet"
KUBE_PROXY_BIN="${K8S_DIR}/kube-proxy"
# what build.sh k8s produces (one go build: shared packages are compiled once)
K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
# Default: etcd built from source. ETCD_BIN=/usr/bin/etcd uses Debian 12's etcd
# 3.4.23 instead, which lacks RequestWatchProgress (see README).
ETCD_BIN="${ETCD_BIN:-${ETCD_DIR}/etcd}"
COREDNS_BIN="${COREDNS_DIR}/coredns"
# helm: the one `make test` uses too (tests/support/helm.py: static binary from a pinned wheel).
HELM_DIR="${BIN_DIR}/aws-cdk-kubectl-v33-2.1.0"
HELM_BIN="${HELM_DIR}/helm"

# ---- cluster ----
CLUSTER_NAME="${CLUSTER_NAME:-celery-fleet-e2e}"
CLUSTER_HOME="${CACHE_DIR}/clusters/${CLUSTER_NAME}"   # pki/, etcd/, logs/, pids/, node/
KUBECONFIG_PATH="${CLUSTER_HOME}/kubeconfig.yaml"      # admin
# Sockets and containerd's state: short paths (a unix socket path has at most 107 bytes).
CLUSTER_RUN="/run/celery-fleet/${CLUSTER_NAME}"
NODE_NAME="${CLUSTER_NAME}-node"

# The cluster's own network, 10.<octet>.0.0/16, its octet derived from the cluster's name so
# that the e2e suite's cluster and a developer's `make cluster-up` one can run side by side:
#   10.N.0.1/30   host end of the veth pair: kube-apiserver and etcd listen here (and the
#                 suite's host-side servers: Prometheus, the External metrics APIs)
#   10.N.0.2/30   the node: its own network namespace with containerd, kubelet, kube-proxy
#   10.N.16.0/20  Services (10.N.16.1 kubernetes, 10.N.16.10 kube-dns)
#   10.N.128.0/24 pods, on the node's CNI bridge
# The host routes the Service and pod ranges to the node, so tests reach both from here.
CLUSTER_OCTET="${CLUSTER_OCTET:-$(( 100 + $(printf '%s' "${CLUSTER_NAME}" | cksum | cut -d' ' -f1) % 100 ))}"
NET_PREFIX="10.${CLUSTER_OCTET}"
HOST_IP="${NET_PREFIX}.0.1"
NODE_IP="${NET_PREFIX}.0.2"
SERVICE_CIDR="${NET_PREFIX}.16.0/20"
KUBERNETES_SERVICE_IP="${NET_PREFIX}.16.1"
DNS_SERVICE_IP="${NET_PREFIX}.16.10"
POD_CIDR="${NET_PREFIX}.128.0/24"
POD_GATEWAY="${NET_PREFIX}.128.1"
APISERVER_PORT=6443
APISERVER_URL="https://${HOST_IP}:${APISERVER_PORT}"
NETNS="cf-${CLUSTER_OCTET}"                 # ip netns name of the node
VETH_HOST="cf${CLUSTER_OCTET}h"             # interface names: at most 15 bytes
VETH_NODE="cf${CLUSTER_OCTET}n"
CNI_BRIDGE="cf${CLUSTER_OCTET}br"
# cgroup (v1 controllers and the unified hierarchy) the kubelet puts every pod under
CGROUP_ROOT="/celery-fleet-${CLUSTER_NAME}"

# Images the node runs, all built locally (there is no registry): the pod sandbox ("pause")
# and CoreDNS, each a static binary in a FROM-scratch image.
PAUSE_IMAGE="celery-fleet.local/pause:e2e"
COREDNS_IMAGE="celery-fleet.local/coredns:${COREDNS_VERSION}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
