#!/usr/bin/env bash
# `make e2e`: build (or reuse) the cluster tools and the autoscalers, start a fresh kwok
# cluster, run the end-to-end suite (tests/e2e) against it, and tear everything down,
# even on failure, leaving no process behind. Prints how long each phase took.
#
# Env: PYTHON (the venv's python, default .venv/bin/python); E2E_PYTEST_ARGS (extra pytest
# arguments, e.g. "-k hpa"); E2E_AUTOSCALERS (what to build, default "prometheus-adapter keda";
# the KEDA test fails without KEDA, so pair it with E2E_PYTEST_ARGS="-k 'not keda'");
# KEEP_CLUSTER=1 (leave the cluster up); CELERY_FLEET_CACHE; CLUSTER_NAME (default
# celery-fleet-e2e-suite: not the `make cluster-up` one, so `make e2e` never tears down a
# developer's cluster); CELERY_FLEET_E2E_CHART (test another copy of the chart).
set -euo pipefail
export CLUSTER_NAME="${CLUSTER_NAME:-celery-fleet-e2e-suite}"
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The suite's timing assumptions (tests/e2e/test_autoscaling_*.py: HPA_SYNC) rest on these:
# the HPA controller syncs every 5 s (default 15 s), and kube-apiserver's aggregator dials the
# endpoints of an APIService's Service itself (no kube-proxy here), so the External metrics API
# can be served by prometheus-adapter or KEDA running on this host.
export CLUSTER_EXTRA_ARGS="kube-controller-manager=horizontal-pod-autoscaler-sync-period=5s kube-apiserver=enable-aggregator-routing=true ${CLUSTER_EXTRA_ARGS:-}"
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
    log "KEEP_CLUSTER=1: cluster ${CLUSTER_NAME} left running (${KUBECONFIG_PATH})"
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

[[ -x "${PYTHON}" ]] || die "no virtualenv python at ${PYTHON} (make venv)"
phase "build cluster tools (cached)" "${CLUSTER_DIR}/build.sh"
# shellcheck disable=SC2086
phase "build ${E2E_AUTOSCALERS:-prometheus-adapter keda} (cached)" "${CLUSTER_DIR}/build-autoscalers.sh" build ${E2E_AUTOSCALERS:-prometheus-adapter keda}
phase "Go modules for CRDs (cached)" "${CLUSTER_DIR}/build-autoscalers.sh" crds >/dev/null
# A fresh cluster: one left by an interrupted run may have other flags.
if [[ -f "${CLUSTER_HOME}/kwok.yaml" ]]; then
  phase "cluster down (stale)" "${CLUSTER_DIR}/cluster.sh" down
fi
phase "cluster up" "${CLUSTER_DIR}/cluster.sh" up
eval "$("${CLUSTER_DIR}/cluster.sh" env)"
export KUBECONFIG
# E2E_PYTEST_ARGS is split as the shell would (quotes allowed: -k 'not keda').
eval "pytest_args=(${E2E_PYTEST_ARGS:-})"
phase "pytest tests/e2e" env CELERY_FLEET_E2E=1 "${PYTHON}" -m pytest "${REPO_ROOT}/tests/e2e" \
  -p no:cacheprovider -ra --durations=0 --basetemp="${CACHE_DIR}/e2e-tmp" "${pytest_args[@]}"
