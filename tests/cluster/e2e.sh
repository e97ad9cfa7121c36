#!/usr/bin/env bash
# `make e2e`: build (or reuse) the cluster and the autoscalers, build the images (`make
# image-local`, the Redis/PostgreSQL stand-ins), start a fresh one-node cluster, import the
# images into its containerd, run the end-to-end suite (tests/e2e) against it, and tear
# everything down, even on failure, leaving no process behind. Prints how long each phase took.
#
# Env: PYTHON (the venv's python, default .venv/bin/python); E2E_PYTEST_ARGS (extra pytest
# arguments, e.g. "-k hpa"); E2E_AUTOSCALERS (what to build, default "prometheus-adapter keda";
# the KEDA test fails without KEDA, so pair it with E2E_PYTEST_ARGS="-k 'not keda'");
# KEEP_CLUSTER=1 (leave the cluster and the last release up); CELERY_FLEET_CACHE; CLUSTER_NAME
# (default celery-fleet-e2e-suite: not the `make cluster-up` one, so `make e2e` never tears down
# a developer's cluster); CELERY_FLEET_E2E_CHART (test another copy of the chart);
# E2E_SKIP_BUILDS=1 (the builds ran already, e.g. in .ci/run's background job).
set -euo pipefail
export CLUSTER_NAME="${CLUSTER_NAME:-celery-fleet-e2e-suite}"
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The suite's timing assumptions (tests/e2e/test_autoscaling.py, test_drain.py: HPA_SYNC) rest
# on this: the HPA controller syncs every 5 s (default 15 s).
export CLUSTER_EXTRA_ARGS="kube-controller-manager=horizontal-pod-autoscaler-sync-period=5s ${CLUSTER_EXTRA_ARGS:-}"
# The images the chart runs on the node (tests/e2e/chart.py reads the same variables), under
# tags of their own: Docker's tags are shared by every checkout on the machine.
export CELERY_FLEET_E2E_IMAGE="${CELERY_FLEET_E2E_IMAGE:-celery-fleet:e2e}"
export CELERY_FLEET_E2E_REDIS_IMAGE="${CELERY_FLEET_E2E_REDIS_IMAGE:-celery-fleet-redis:e2e}"
export CELERY_FLEET_E2E_POSTGRES_IMAGE="${CELERY_FLEET_E2E_POSTGRES_IMAGE:-celery-fleet-postgres:e2e}"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
# Every process the suite starts inherits this; whatever is left at the end is stopped by PID.
export FLEET_E2E_RUN_ID="e2e-$$-$(date +%s)"

declare -a PHASES=()
overall=$(date +%s)
phase() { # phase NAME CMD...
  local name=$1 t0 rc=0; shift
  log "=== ${name}"
  t0=$(date +%s)
  "$@" || rc=$?
  PHASES+=("$(printf '%-40s %5ss%s' "${name}" "$(( $(date +%s) - t0 ))" "$([[ ${rc} -eq 0 ]] || echo "  (FAILED rc=${rc})")")")
  return "${rc}"
}

pgid_of() { # process group of PID, from /proc/PID/stat (fields after "(comm) ": state ppid pgrp)
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${stat##*) }
  set -- ${rest}
  echo "$3"
}

run_pids() { # processes of this run (its id in their environment) outside this script's own
  # process group (its subshells and pipelines): what pytest started in sessions of their own.
  local p own
  own=$(pgid_of $$)
  for p in /proc/[0-9]*; do
    [[ "$(pgid_of "${p#/proc/}")" == "${own}" ]] && continue
    # the cluster's own components: `cluster.sh down` (or KEEP_CLUSTER=1) takes care of them
    [[ "$(tr '\0' ' ' 2>/dev/null <"${p}/cmdline")" == *"${CLUSTER_HOME}/"* ]] && continue
    tr '\0' '\n' 2>/dev/null <"${p}/environ" | grep -qx "FLEET_E2E_RUN_ID=${FLEET_E2E_RUN_ID}" && echo "${p#/proc/}"
  done
  return 0
}

stop_leftovers() {
  local pids
  pids=$(run_pids)
  [[ -z "${pids}" ]] && return 0
  log "stopping processes the suite left behind: ${pids//$'\n'/ }"
  local p
  for p in ${pids}; do log "  ${p}: $(tr '\0' ' ' 2>/dev/null </proc/"${p}"/cmdline | cut -c1-200)"; done
  # shellcheck disable=SC2086
  kill ${pids} 2>/dev/null || true
  sleep 3
  pids=$(run_pids)
  # shellcheck disable=SC2086
  [[ -z "${pids}" ]] || kill -9 ${pids} 2>/dev/null || true
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  stop_leftovers
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    log "KEEP_CLUSTER=1: cluster ${CLUSTER_NAME} and the last release left running; to look:"
    log "  eval \"\$(make -s cluster-env CLUSTER_NAME=${CLUSTER_NAME})\"; kubectl get pods -A"
    log "  stop it: make cluster-down CLUSTER_NAME=${CLUSTER_NAME}"
  else
    phase "cluster down" "${CLUSTER_DIR}/cluster.sh" down || rc=1
  fi
  [[ -z "$(run_pids)" ]] || { log "ERROR: processes of this run still running: $(run_pids | tr '\n' ' ')"; rc=1; }
  echo "---- make e2e phase timings ----"
  printf '%s\n' "${PHASES[@]}"
  printf '%-40s %5ss\n' "total" "$(( $(date +%s) - overall ))"
  if [[ ${rc} -eq 0 ]]; then echo "e2e: PASS"; else echo "e2e: FAIL (rc=${rc})"; fi
  exit "${rc}"
}
trap finish EXIT
trap 'exit 130' INT TERM

build_images() { # the application image (docker/Dockerfile on the local Debian base), stand-ins
  # without the run's id: a Docker engine started here is shared, not the suite's to stop
  env -u FLEET_E2E_RUN_ID make -C "${REPO_ROOT}" --no-print-directory image-local IMAGE="${CELERY_FLEET_E2E_IMAGE}" >&2
  (cd "${REPO_ROOT}" && "${PYTHON}" -c 'import os; from tests.support import docker
docker.build_standins(os.environ["CELERY_FLEET_E2E_REDIS_IMAGE"], os.environ["CELERY_FLEET_E2E_POSTGRES_IMAGE"])')
}

[[ -x "${PYTHON}" ]] || die "no virtualenv python at ${PYTHON} (make venv)"
phase "node packages (containerd, runc, CNI)" "${CLUSTER_DIR}/node-deps.sh"
if [[ "${E2E_SKIP_BUILDS:-0}" != 1 ]]; then
  phase "build etcd, Kubernetes, CoreDNS (cached)" "${CLUSTER_DIR}/build.sh"
  # shellcheck disable=SC2086
  phase "build ${E2E_AUTOSCALERS:-prometheus-adapter keda} (cached)" "${CLUSTER_DIR}/build-autoscalers.sh" build ${E2E_AUTOSCALERS:-prometheus-adapter keda}
fi
phase "Go modules for CRDs and RBAC (cached)" "${CLUSTER_DIR}/build-autoscalers.sh" crds >/dev/null
phase "helm (the wheel make test uses)" "${PYTHON}" -c 'from tests.support.helm import ensure_helm; ensure_helm()'
phase "images (make image-local, stand-ins)" build_images
# A fresh cluster: one left by an interrupted run may have other flags.
if [[ -d "${CLUSTER_HOME}" ]]; then
  phase "cluster down (stale)" "${CLUSTER_DIR}/cluster.sh" down
fi
phase "cluster up" "${CLUSTER_DIR}/cluster.sh" up
phase "import images into the node" "${CLUSTER_DIR}/cluster.sh" load \
  "${CELERY_FLEET_E2E_IMAGE}" "${CELERY_FLEET_E2E_REDIS_IMAGE}" "${CELERY_FLEET_E2E_POSTGRES_IMAGE}"
eval "$("${CLUSTER_DIR}/cluster.sh" env)"
export KUBECONFIG
[[ "${KEEP_CLUSTER:-0}" == 1 ]] && export CELERY_FLEET_E2E_KEEP=1
# E2E_PYTEST_ARGS is split as the shell would (quotes allowed: -k 'not keda').
eval "pytest_args=(${E2E_PYTEST_ARGS:-})"
phase "pytest tests/e2e" env CELERY_FLEET_E2E=1 "${PYTHON}" -m pytest "${REPO_ROOT}/tests/e2e" \
  -p no:cacheprovider -ra --durations=0 --basetemp="${CACHE_DIR}/e2e-tmp" "${pytest_args[@]}"
