#!/usr/bin/env bash
# Smoke test of the e2e cluster: up, list nodes, create a Deployment of the local pause
# image, scale it to 3, wait for 3 ready pods (real containers on the node), check the HPA
# controller runs, down. Prints how long each phase took. KEEP_CLUSTER=1 skips the final down.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="${CLUSTER_DIR}/cluster.sh"
NS=smoke
declare -a PHASES=()
phase_start=0
phase() { # phase NAME CMD... : run CMD, record its duration
  local name=$1; shift
  log "== ${name}"
  phase_start=$(date +%s%3N)
  "$@"
  local ms=$(( $(date +%s%3N) - phase_start ))
  PHASES+=("$(printf '%-30s %4d.%01ds' "${name}" $((ms / 1000)) $((ms % 1000 / 100)))")
}
report() {
  local rc=$?
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    phase "cluster down" "${CLUSTER}" down || rc=1
  fi
  echo "---- smoke phase timings ----"
  printf '%s\n' "${PHASES[@]}"
  if [[ ${rc} -eq 0 ]]; then echo "smoke: PASS"; else echo "smoke: FAIL (rc=${rc})"; fi
  exit "${rc}"
}
trap report EXIT

k() { "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

create_deployment() {
  k create namespace "${NS}"
  # The node's own sandbox image: imported by `cluster.sh up`, never pulled.
  k -n "${NS}" create deployment smoke --image="${PAUSE_IMAGE}" --replicas=1 --dry-run=client -o json |
    jq '.spec.template.spec.containers[0].imagePullPolicy = "Never"' | k apply -f -
  k -n "${NS}" rollout status deployment/smoke --timeout=120s
}

wait_hpa_controller() {
  # An HPA on a Deployment gets conditions only if kube-controller-manager's
  # horizontal-pod-autoscaler controller is running.
  k -n "${NS}" autoscale deployment smoke --min=1 --max=5 --cpu=80%
  k -n "${NS}" wait hpa/smoke --for=condition=AbleToScale --timeout=90s
}

phase "build (cached after 1st run)" "${CLUSTER_DIR}/build.sh"
phase "cluster up" "${CLUSTER}" up
phase "get nodes" k get nodes -o wide
phase "create deployment" create_deployment
phase "scale to 3" k -n "${NS}" scale deployment/smoke --replicas=3
phase "wait 3 ready pods" k -n "${NS}" wait deployment/smoke \
  --for=jsonpath='{.status.readyReplicas}'=3 --timeout=120s
k -n "${NS}" get pods -o wide
ready=$(k -n "${NS}" get pods -l app=smoke \
  -o jsonpath='{range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^Running/True$' || true)
[[ "${ready}" -eq 3 ]] || die "expected 3 Running+Ready pods, got ${ready}"
phase "HPA controller answers" wait_hpa_controller
k -n "${NS}" get hpa smoke
