#!/usr/bin/env bash
# The autoscaling side of the e2e suite, built from source through the Go module
# proxy into ${CELERY_FLEET_CACHE:-<repo>/.cache}/bin/<tool>-<version>/, like build.sh:
#
#   prometheus-adapter  sigs.k8s.io/prometheus-adapter/cmd/adapter  (adapter-build/go.mod)
#   keda                github.com/kedacore/keda/v2/cmd/{operator,adapter} (keda-build/go.mod)
#
# and the CRDs the chart's optional objects need (read from the Go module cache):
#   KEDA's (config/crd/bases of the same keda module) and prometheus-operator's
#   ServiceMonitor/PrometheusRule (example/prometheus-operator-crd of its module).
#
#   tests/cluster/build-autoscalers.sh [build] [prometheus-adapter|keda]...  (default: both)
#   tests/cluster/build-autoscalers.sh path prometheus-adapter|keda-operator|keda-adapter
#   tests/cluster/build-autoscalers.sh crds      # print the CRD files (downloads the modules)
#   tests/cluster/build-autoscalers.sh rbac      # print KEDA's RBAC files (its release manifests')
#
# Env: as build.sh (CELERY_FLEET_CACHE, BUILD_NICE, BUILD_PARALLEL, FORCE=1).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ADAPTER_VERSION="$(modver "${CLUSTER_DIR}/adapter-build/go.mod" sigs.k8s.io/prometheus-adapter)"
KEDA_VERSION="$(modver "${CLUSTER_DIR}/keda-build/go.mod" github.com/kedacore/keda/v2)"
PROMETHEUS_OPERATOR_VERSION="v0.85.0"   # CRDs only (ServiceMonitor, PrometheusRule)
ADAPTER_DIR="${BIN_DIR}/prometheus-adapter-${ADAPTER_VERSION}"
KEDA_DIR="${BIN_DIR}/keda-${KEDA_VERSION}"

export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -p=${BUILD_PARALLEL:-2}"
NICE=(nice -n "${BUILD_NICE:-15}")

build_one() { # build_one NAME DIR WRAPPER_DIR LDFLAGS PKG:OUT...
  local name=$1 dir=$2 wrapper=$3 ld=$4; shift 4
  local bins=() p
  for p in "$@"; do bins+=("${p##*:}"); done
  if [[ "${FORCE:-0}" != 1 ]]; then
    local ok=1 b
    for b in "${bins[@]}"; do [[ -x "${dir}/${b}" ]] || ok=0; done
    [[ ${ok} == 1 ]] && { log "${name}: cached in ${dir}"; return 0; }
  fi
  mkdir -p "${BIN_DIR}" "${LOG_DIR}"
  exec 8>"${CACHE_DIR}/.build-${name}.lock"
  flock 8
  local tmp="${dir}.tmp.$$" logf="${LOG_DIR}/build-${name}.log" start rc=0
  rm -rf "${dir}".tmp.*; mkdir -p "${tmp}"
  log "${name}: building (log: ${logf})"
  start=$(date +%s)
  (
    set -x
    cd "${CLUSTER_DIR}/${wrapper}"
    for p in "$@"; do
      "${NICE[@]}" go build -trimpath -ldflags "-s -w ${ld}" -o "${tmp}/${p##*:}" "${p%%:*}"
    done
  ) >"${logf}" 2>&1 || rc=$?
  if [[ ${rc} -ne 0 ]]; then
    rm -rf "${tmp}"; tail -n 30 "${logf}" >&2
    die "${name}: build failed after $(( $(date +%s) - start ))s (see ${logf})"
  fi
  rm -rf "${dir}"; mv "${tmp}" "${dir}"
  log "${name}: built in $(( $(date +%s) - start ))s -> ${dir}"
  printf '%s %s %ss %s\n' "$(date -u +%FT%TZ)" "${name}" "$(( $(date +%s) - start ))" "${dir}" >>"${LOG_DIR}/build-times.log"
}

build_adapter() {
  build_one prometheus-adapter "${ADAPTER_DIR}" adapter-build "" \
    "sigs.k8s.io/prometheus-adapter/cmd/adapter:adapter"
}

build_keda() {
  # KEDA's Makefile stamps version and commit the same way.
  local ld="-X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
  ld+=" -X github.com/kedacore/keda/v2/version.GitCommit=gomod-${KEDA_VERSION}"
  build_one keda "${KEDA_DIR}" keda-build "${ld}" \
    "github.com/kedacore/keda/v2/cmd/operator:keda-operator" \
    "github.com/kedacore/keda/v2/cmd/adapter:keda-adapter"
}

module_dir() { # module_dir MODULE@VERSION -> its folder in the module cache (downloaded if needed)
  (cd / && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
}

cmd_crds() {
  local keda prom
  keda=$(module_dir "github.com/kedacore/keda/v2@${KEDA_VERSION}")
  prom=$(module_dir "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}")
  [[ -d "${keda}" && -d "${prom}" ]] || die "cannot find the keda/prometheus-operator modules"
  ls "${keda}"/config/crd/bases/keda.sh_*.yaml
  ls "${prom}"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml
}

cmd_rbac() { # what KEDA's release manifests (kustomize config/default) grant its ServiceAccount
  local keda
  keda=$(module_dir "github.com/kedacore/keda/v2@${KEDA_VERSION}")
  [[ -d "${keda}" ]] || die "cannot find the keda module"
  ls "${keda}"/config/service_account/service_account.yaml \
     "${keda}"/config/rbac/{role,role_binding,aggregate_cluster_roles}.yaml \
     "${keda}"/config/metrics-server/{role,role_binding}.yaml
}

cmd_path() {
  case "${1:-}" in
    prometheus-adapter) echo "${ADAPTER_DIR}/adapter" ;;
    keda-operator) echo "${KEDA_DIR}/keda-operator" ;;
    keda-adapter) echo "${KEDA_DIR}/keda-adapter" ;;
    *) die "path: prometheus-adapter|keda-operator|keda-adapter" ;;
  esac
}

case "${1:-build}" in
  path) cmd_path "${2:-}" ;;
  crds) cmd_crds ;;
  rbac) cmd_rbac ;;
  build|prometheus-adapter|keda)
    [[ "${1:-build}" == build ]] && shift || true
    targets=("$@"); [[ ${#targets[@]} -eq 0 ]] && targets=(prometheus-adapter keda)
    t0=$(date +%s)
    for t in "${targets[@]}"; do
      case "${t}" in
        prometheus-adapter) build_adapter ;;
        keda) build_keda ;;
        *) die "unknown target ${t}" ;;
      esac
    done
    log "autoscalers done in $(( $(date +%s) - t0 ))s"
    ;;
  *) die "usage: $0 [build [prometheus-adapter|keda]...] | path NAME | crds | rbac" ;;
esac
