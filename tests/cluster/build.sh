#!/usr/bin/env bash
# Build the cluster from source (Go module proxy) into
# ${CELERY_FLEET_CACHE:-<repo>/.cache}/bin/<tool>-<version>/: Kubernetes (control plane, kubelet,
# kube-proxy, kubectl: one `go build`, so the packages they share are compiled once), etcd and
# CoreDNS. Anything already built is skipped, so only the first run pays.
#
#   tests/cluster/build.sh [all|etcd|k8s|coredns]...   (default: all)
#
# Env: CELERY_FLEET_CACHE (cache root), BUILD_NICE (default 15),
#      BUILD_PARALLEL (go build -p, default 2), FORCE=1 (rebuild).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go not found in PATH"

export CGO_ENABLED=0
export GOWORK=off
# -buildvcs=false: binaries must not depend on the state of this checkout
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -p=${BUILD_PARALLEL:-2}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
NICE=(nice -n "${BUILD_NICE:-15}")

mkdir -p "${BIN_DIR}" "${LOG_DIR}"

# One build at a time per cache (cluster.sh may call us too).
exec 9>"${CACHE_DIR}/.build.lock"
if ! flock -n 9; then
  log "another build.sh holds ${CACHE_DIR}/.build.lock; waiting"
  flock 9
fi

# mod_field MODULE@VERSION TEMPLATE -> `go list -m -f TEMPLATE` outside any module
mod_field() {
  (cd / && go list -m -f "$2" "$1")
}

# have DIR BIN... -> true when every binary exists and runs
have() {
  local dir=$1; shift
  local b
  [[ "${FORCE:-0}" == 1 ]] && return 1
  for b in "$@"; do [[ -x "${dir}/${b}" ]] || return 1; done
  return 0
}

# run_build NAME DIR "BINS" FUNC: builds into a temp dir, then renames it into place
run_build() {
  local name=$1 dir=$2 bins=$3 fn=$4
  # shellcheck disable=SC2086
  if have "${dir}" ${bins}; then
    log "${name}: cached in ${dir}"
    return 0
  fi
  local tmp="${dir}.tmp.$$" logf="${LOG_DIR}/build-${name}.log" start end rc=0
  rm -rf "${dir}".tmp.*; mkdir -p "${tmp}"   # stale temp dirs of interrupted runs
  log "${name}: building (log: ${logf})"
  start=$(date +%s)
  ( set -x; "${fn}" "${tmp}" ) >"${logf}" 2>&1 || rc=$?
  end=$(date +%s)
  if [[ ${rc} -ne 0 ]]; then
    rm -rf "${tmp}"
    tail -n 30 "${logf}" >&2
    die "${name}: build failed after $((end - start))s (see ${logf})"
  fi
  rm -rf "${dir}"; mv "${tmp}" "${dir}"
  log "${name}: built in $((end - start))s -> ${dir}"
  printf '%s %s %ss %s\n' "$(date -u +%FT%TZ)" "${name}" "$((end - start))" "${dir}" >>"${LOG_DIR}/build-times.log"
}

build_etcd() {
  local out=$1 modver
  modver=$(cd "${CLUSTER_DIR}/etcd-build" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
  [[ "${modver}" == "${ETCD_VERSION}" ]] || {
    echo "etcd-build/go.mod pins ${modver}, lib.sh wants ${ETCD_VERSION}"; return 1; }
  (cd "${CLUSTER_DIR}/etcd-build" && "${NICE[@]}" go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod-${ETCD_VERSION}" -o "${out}/etcd" .)
  "${out}/etcd" --version
}

build_coredns() {
  local out=$1 modver
  modver=$(cd "${CLUSTER_DIR}/coredns-build" && go list -m -f '{{.Version}}' github.com/coredns/coredns)
  [[ "${modver}" == "${COREDNS_VERSION}" ]] || { echo "coredns-build/go.mod pins ${modver}"; return 1; }
  (cd "${CLUSTER_DIR}/coredns-build" && "${NICE[@]}" go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=gomod-${COREDNS_VERSION}" -o "${out}/coredns" .)
  "${out}/coredns" -version
  "${out}/coredns" -plugins | grep -qx kubernetes || { echo "the kubernetes plugin is missing"; return 1; }
}

build_k8s() {
  local out=$1 modver build_date major minor ld="" k v
  modver=$(cd "${CLUSTER_DIR}/k8s-build" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ "${modver}" == "${K8S_VERSION}" ]] || {
    echo "k8s-build/go.mod pins ${modver}, lib.sh wants ${K8S_VERSION}: run tests/cluster/gen-k8s-mod.sh ${K8S_VERSION}"
    return 1
  }
  # Reproducible build date: the release's publication time on the module proxy.
  build_date=$(mod_field "k8s.io/kubernetes@${K8S_VERSION}" '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}')
  [[ -n "${build_date}" ]] || { echo "cannot read the release time of k8s.io/kubernetes@${K8S_VERSION}"; return 1; }
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  for kv in "gitVersion=${K8S_VERSION}" "gitMajor=${major}" "gitMinor=${minor}" \
            "gitCommit=gomod-${K8S_VERSION}" "gitTreeState=clean" "buildDate=${build_date}"; do
    k=${kv%%=*}; v=${kv#*=}
    ld+=" -X k8s.io/component-base/version.${k}=${v} -X k8s.io/client-go/pkg/version.${k}=${v}"
  done
  # Same as Kubernetes' release builds: stripped, static (CGO_ENABLED=0), -trimpath.
  (cd "${CLUSTER_DIR}/k8s-build" && "${NICE[@]}" go build -trimpath -ldflags "-s -w${ld}" -o "${out}/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy)
  "${out}/kube-apiserver" --version
  "${out}/kubectl" version --client
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(all)
overall_start=$(date +%s)
for t in "${targets[@]}"; do
  case "${t}" in
    all)
      run_build etcd "${ETCD_DIR}" "etcd" build_etcd
      run_build k8s "${K8S_DIR}" "${K8S_BINS}" build_k8s
      run_build coredns "${COREDNS_DIR}" "coredns" build_coredns
      ;;
    etcd) run_build etcd "${ETCD_DIR}" "etcd" build_etcd ;;
    k8s) run_build k8s "${K8S_DIR}" "${K8S_BINS}" build_k8s ;;
    coredns) run_build coredns "${COREDNS_DIR}" "coredns" build_coredns ;;
    *) die "unknown target '${t}' (all|etcd|k8s|coredns)" ;;
  esac
done
log "done in $(( $(date +%s) - overall_start ))s; binaries under ${BIN_DIR}"
