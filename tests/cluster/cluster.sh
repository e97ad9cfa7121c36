#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, every part real and built from source:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler on the host; containerd
# (Debian's), runc, CNI (bridge + host-local), kubelet and kube-proxy in a network namespace
# of their own (the node); CoreDNS as a Deployment. No registry: the images the node runs are
# built locally and imported into the node's containerd (`load`).
#
#   tests/cluster/cluster.sh up            # build if needed, start everything, node Ready, DNS up
#   tests/cluster/cluster.sh down          # stop every process, unmount, remove netns/cgroups/dirs
#   tests/cluster/cluster.sh env           # print `export KUBECONFIG=...` and PATH
#   tests/cluster/cluster.sh status
#   tests/cluster/cluster.sh load IMAGE... # docker save IMAGE | import into the node's containerd
#   tests/cluster/cluster.sh node-exec CMD # run CMD in the node's network namespace
#
# Env: CELERY_FLEET_CACHE, CLUSTER_NAME, CLUSTER_OCTET (network 10.N/16), ETCD_BIN,
#      CLUSTER_EXTRA_ARGS ("component=flag=value ...", e.g.
#      "kube-controller-manager=horizontal-pod-autoscaler-sync-period=5s").
# Needs root (network namespace, cgroups, mounts), containerd, runc, containernetworking-plugins,
# and a Docker engine for the images (docker/ensure-docker.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKI="${CLUSTER_HOME}/pki"
PIDS="${CLUSTER_HOME}/pids"
LOGS="${CLUSTER_HOME}/logs"
NODE_HOME="${CLUSTER_HOME}/node"
CONTAINERD_SOCK="${CLUSTER_RUN}/containerd.sock"
CNI_BIN_DIR="${CNI_BIN_DIR:-/usr/lib/cni}"
IMAGES_DIR="${CLUSTER_DIR}/images"

kubectl() { "${KUBECTL_BIN}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }
ctr_node() { ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }
in_node() { nsenter --net="/run/netns/${NETNS}" -- "$@"; }

# ------------------------------------------------------------------ processes
pid_running() { # PID exists and is not a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat:0:1}" != Z ]]
}

extra_args_for() { # the CLUSTER_EXTRA_ARGS of one component, as --flag=value
  local a
  for a in ${CLUSTER_EXTRA_ARGS:-}; do
    [[ "${a%%=*}" == "$1" ]] && printf -- '--%s\n' "${a#*=}"
  done
  return 0
}

start() { # start NAME [node] CMD... : in the background, own session, log + pid file
  local name=$1; shift
  local prefix=()
  if [[ "$1" == node ]]; then prefix=(nsenter "--net=/run/netns/${NETNS}" --); shift; fi
  local extra=()
  mapfile -t extra < <(extra_args_for "${name}")
  mkdir -p "${PIDS}" "${LOGS}"
  # not the e2e run's id (tests/cluster/e2e.sh stops what carries it): `down` stops these
  env -u FLEET_E2E_RUN_ID setsid "${prefix[@]}" "$@" "${extra[@]}" >"${LOGS}/${name}.log" 2>&1 </dev/null &
  echo $! >"${PIDS}/${name}.pid"
}

alive() { [[ -f "${PIDS}/$1.pid" ]] && pid_running "$(cat "${PIDS}/$1.pid")"; }

wait_for() { # wait_for WHAT SECONDS NAME CMD... : poll CMD until it succeeds; NAME's log on failure
  local what=$1 seconds=$2 name=$3; shift 3
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if ! alive "${name}"; then
      tail -n 40 "${LOGS}/${name}.log" >&2 || true
      die "${name} exited while waiting for ${what}"
    fi
    if (( $(date +%s) > deadline )); then
      tail -n 40 "${LOGS}/${name}.log" >&2 || true
      die "timed out after ${seconds}s waiting for ${what}"
    fi
    sleep 0.3
  done
}

# ------------------------------------------------------------------ PKI (openssl, EC P-256)
cert() { # cert NAME CN [O] [SAN] [ca]: NAME.key + NAME.crt signed by ca (default ca)
  local name=$1 cn=$2 org=${3:-} san=${4:-} ca=${5:-ca} subj ext
  subj="/CN=${cn}"; [[ -n "${org}" ]] && subj="/O=${org}${subj}"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${PKI}/${name}.key" 2>/dev/null
  ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth${san:+,serverAuth}"
  [[ -n "${san}" ]] && ext+=$'\n'"subjectAltName=${san}"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" 2>/dev/null |
    openssl x509 -req -CA "${PKI}/${ca}.crt" -CAkey "${PKI}/${ca}.key" -CAcreateserial -days 30 \
      -extfile <(printf '%s\n' "${ext}") -out "${PKI}/${name}.crt" 2>/dev/null
}

ca() { # ca NAME CN
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${PKI}/$1.key" 2>/dev/null
  openssl req -x509 -new -key "${PKI}/$1.key" -subj "/CN=$2" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "${PKI}/$1.crt" 2>/dev/null
}

kubeconfig() { # kubeconfig FILE CERT_NAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ${CLUSTER_NAME}
  cluster:
    server: ${APISERVER_URL}
    certificate-authority: ${PKI}/ca.crt
users:
- name: $2
  user:
    client-certificate: ${PKI}/$2.crt
    client-key: ${PKI}/$2.key
contexts:
- name: ${CLUSTER_NAME}
  context: {cluster: ${CLUSTER_NAME}, user: $2}
current-context: ${CLUSTER_NAME}
EOF
}

make_pki() {
  [[ -f "${PKI}/done" ]] && return 0
  rm -rf "${PKI}"; mkdir -p "${PKI}"
  ca ca "${CLUSTER_NAME}-ca"
  ca front-proxy-ca "${CLUSTER_NAME}-front-proxy-ca"
  cert apiserver kube-apiserver "" "IP:${HOST_IP},IP:${KUBERNETES_SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert admin kubernetes-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert front-proxy-client front-proxy-client "" "" front-proxy-ca
  cert kube-controller-manager system:kube-controller-manager
  cert kube-scheduler system:kube-scheduler
  cert kubelet "system:node:${NODE_NAME}" system:nodes
  cert kube-proxy system:kube-proxy
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${PKI}/sa.key" 2>/dev/null
  openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
  local c
  for c in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do
    kubeconfig "${CLUSTER_HOME}/${c}.kubeconfig" "${c}"
  done
  cp "${CLUSTER_HOME}/admin.kubeconfig" "${KUBECONFIG_PATH}"
  touch "${PKI}/done"
}

# ------------------------------------------------------------------ the node's network
net_up() {
  if ! ip netns list | grep -qw "${NETNS}"; then
    if ip -4 addr show | grep -q "inet ${NET_PREFIX}\." || ip route | grep -q "^${NET_PREFIX}\."; then
      die "${NET_PREFIX}.0.0/16 is in use on this host (another cluster?): set CLUSTER_OCTET"
    fi
    ip netns add "${NETNS}"
    ip link add "${VETH_HOST}" type veth peer name "${VETH_NODE}" netns "${NETNS}"
    ip addr add "${HOST_IP}/30" dev "${VETH_HOST}"
    ip link set "${VETH_HOST}" up
    ip -n "${NETNS}" addr add "${NODE_IP}/30" dev "${VETH_NODE}"
    ip -n "${NETNS}" link set lo up
    ip -n "${NETNS}" link set "${VETH_NODE}" up
    ip -n "${NETNS}" route add default via "${HOST_IP}"
    # Services and pods are behind the node (kube-proxy's rules and the CNI bridge live there).
    ip route add "${SERVICE_CIDR}" via "${NODE_IP}" dev "${VETH_HOST}"
    ip route add "${POD_CIDR}" via "${NODE_IP}" dev "${VETH_HOST}"
  fi
  # Inside the node only (per-namespace settings): route between veth and bridge, and let
  # bridged pod-to-pod traffic through iptables, so a pod reaching a Service backed by a pod
  # on the same bridge gets its replies un-NATed (kube-proxy needs it).
  in_node sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
}

net_down() {
  if ip netns list | grep -qw "${NETNS}"; then
    ip netns delete "${NETNS}"   # takes the veth pair (and so the host routes), bridge, iptables
  fi
  ip link delete "${VETH_HOST}" 2>/dev/null || true
}

# ------------------------------------------------------------------ control plane
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

etcd_url() { # etcd listens on loopback only (pods must not reach it), ports picked once per cluster
  [[ -s "${CLUSTER_HOME}/etcd-ports" ]] || echo "$(free_port) $(free_port)" >"${CLUSTER_HOME}/etcd-ports"
  local ports
  read -r -a ports <"${CLUSTER_HOME}/etcd-ports"
  case "${1:-client}" in
    client) echo "http://127.0.0.1:${ports[0]}" ;;
    peer) echo "http://127.0.0.1:${ports[1]}" ;;
  esac
}

start_control_plane() {
  if ! alive etcd; then
    mkdir -p "${CLUSTER_HOME}/etcd"
    start etcd "${ETCD_BIN}" --name=default --data-dir="${CLUSTER_HOME}/etcd" \
      --listen-client-urls="$(etcd_url)" --advertise-client-urls="$(etcd_url)" \
      --listen-peer-urls="$(etcd_url peer)" --initial-advertise-peer-urls="$(etcd_url peer)" \
      --initial-cluster="default=$(etcd_url peer)" \
      --unsafe-no-fsync --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) --log-level=warn
    wait_for "etcd" 60 etcd curl -fsS "$(etcd_url)/health"
  fi
  if ! alive kube-apiserver; then
    start kube-apiserver "${KUBE_APISERVER_BIN}" \
      --etcd-servers="$(etcd_url)" \
      --bind-address="${HOST_IP}" --advertise-address="${HOST_IP}" --secure-port="${APISERVER_PORT}" \
      --tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
      --client-ca-file="${PKI}/ca.crt" \
      --service-cluster-ip-range="${SERVICE_CIDR}" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="${PKI}/sa.pub" --service-account-signing-key-file="${PKI}/sa.key" \
      --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
      --allow-privileged=true \
      --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
      --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
      --kubelet-preferred-address-types=InternalIP \
      --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
      --requestheader-allowed-names=front-proxy-client \
      --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
      --requestheader-extra-headers-prefix=X-Remote-Extra- \
      --proxy-client-cert-file="${PKI}/front-proxy-client.crt" \
      --proxy-client-key-file="${PKI}/front-proxy-client.key" \
      --profiling=false --v=1
    wait_for "kube-apiserver /readyz" 120 kube-apiserver kubectl get --raw /readyz
  fi
  if ! alive kube-controller-manager; then
    start kube-controller-manager "${KUBE_CONTROLLER_MANAGER_BIN}" \
      --kubeconfig="${CLUSTER_HOME}/kube-controller-manager.kubeconfig" \
      --authentication-kubeconfig="${CLUSTER_HOME}/kube-controller-manager.kubeconfig" \
      --authorization-kubeconfig="${CLUSTER_HOME}/kube-controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 \
      --use-service-account-credentials=true \
      --service-account-private-key-file="${PKI}/sa.key" --root-ca-file="${PKI}/ca.crt" \
      --cluster-signing-cert-file="${PKI}/ca.crt" --cluster-signing-key-file="${PKI}/ca.key" \
      --service-cluster-ip-range="${SERVICE_CIDR}" \
      --leader-elect=false --profiling=false --v=1
  fi
  if ! alive kube-scheduler; then
    start kube-scheduler "${KUBE_SCHEDULER_BIN}" \
      --kubeconfig="${CLUSTER_HOME}/kube-scheduler.kubeconfig" \
      --authentication-kubeconfig="${CLUSTER_HOME}/kube-scheduler.kubeconfig" \
      --authorization-kubeconfig="${CLUSTER_HOME}/kube-scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --profiling=false --v=1
  fi
}

# ------------------------------------------------------------------ the node
cgroups_up() { # the kubelet's --cgroup-root, in every hierarchy (it must exist beforehand)
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "${h}" ]] || continue
    mkdir -p "${h%/}${CGROUP_ROOT}"
  done
  # cpuset: a new v1 cgroup has no CPUs or memory nodes until given its parent's
  if [[ -d /sys/fs/cgroup/cpuset${CGROUP_ROOT} ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset${CGROUP_ROOT}/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset${CGROUP_ROOT}/cpuset.mems"
  fi
}

write_node_config() {
  mkdir -p "${NODE_HOME}"/{cni,cni-ipam,kubelet,pod-logs,containerd} "${CLUSTER_RUN}"
  cat >"${NODE_HOME}/containerd.toml" <<EOF
# containerd of the node only (not Docker's): own root, state and socket.
version = 2
root = "${NODE_HOME}/containerd"
state = "${CLUSTER_RUN}/containerd"
[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${CLUSTER_RUN}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "${NODE_HOME}/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # root lacks CAP_SYS_RESOURCE here: without this, runc fails to lower a container's
  # oom_score_adj and every pod sandbox fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # pod network namespaces under our state dir (not /run/netns), so \`down\` finds them all
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN_DIR}"
    conf_dir = "${NODE_HOME}/cni"
    max_conf_num = 1
EOF
  cat >"${NODE_HOME}/cni/10-celery-fleet.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "celery-fleet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${CNI_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_HOME}/cni-ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GATEWAY}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"${NODE_HOME}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
# this machine: cgroup v1 (cgroup2 only at /sys/fs/cgroup/unified), no systemd
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: ${CGROUP_ROOT}
failSwapOn: false
clusterDNS: [${DNS_SERVICE_IP}]
clusterDomain: cluster.local
podLogsDir: ${NODE_HOME}/pod-logs
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Every image is imported, none can be pulled: never garbage-collect them, and never evict
# for disk pressure on a shared machine's disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 110
shutdownGracePeriod: 0s
EOF
  cat >"${NODE_HOME}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: ${CLUSTER_HOME}/kube-proxy.kubeconfig}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["${NODE_IP}/32"]
iptables: {localhostNodePorts: false}
# leave the kernel's conntrack settings alone (global, shared with the host)
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

start_node() {
  cgroups_up
  write_node_config
  if ! alive containerd; then
    start containerd node containerd --config "${NODE_HOME}/containerd.toml"
    wait_for "the node's containerd" 60 containerd ctr --address "${CONTAINERD_SOCK}" version
  fi
  load_node_images
  if ! alive kubelet; then
    start kubelet node "${KUBELET_BIN}" --config="${NODE_HOME}/kubelet.yaml" \
      --kubeconfig="${CLUSTER_HOME}/kubelet.kubeconfig" --root-dir="${NODE_HOME}/kubelet" \
      --hostname-override="${NODE_NAME}" --node-ip="${NODE_IP}" --v=1
  fi
  if ! alive kube-proxy; then
    start kube-proxy node "${KUBE_PROXY_BIN}" --config="${NODE_HOME}/kube-proxy.yaml" --v=1
  fi
  wait_for "node ${NODE_NAME} to register" 120 kubelet kubectl get node "${NODE_NAME}"
  kubectl wait --for=condition=Ready "node/${NODE_NAME}" --timeout=120s >&2
}

# ------------------------------------------------------------------ images
# docker image ID of what was imported last, per image name: a warm `up` imports nothing.
imported_marker() { echo "${NODE_HOME}/imported/$(printf '%s' "$1" | tr '/:' '__')"; }

load() { # load IMAGE... : from the Docker engine into the node's containerd (unless there already)
  local image id
  mkdir -p "${NODE_HOME}/imported"
  for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "${image}") || die "no docker image ${image}"
    if [[ "$(cat "$(imported_marker "${image}")" 2>/dev/null)" == "${id}" ]]; then
      continue
    fi
    log "importing ${image} into the node's containerd"
    docker save "${image}" | ctr_node images import --no-unpack=false - >&2
    echo "${id}" >"$(imported_marker "${image}")"
  done
}

load_node_images() {
  env -u FLEET_E2E_RUN_ID "${REPO_ROOT}/docker/ensure-docker.sh"
  # the pod sandbox: a static C program that waits for a signal (tests/cluster/images/pause.c)
  if ! docker image inspect "${PAUSE_IMAGE}" >/dev/null 2>&1; then
    local ctx
    ctx=$(mktemp -d)
    gcc -static -Os -o "${ctx}/pause" "${IMAGES_DIR}/pause.c"
    strip "${ctx}/pause"
    docker build -q -t "${PAUSE_IMAGE}" -f "${IMAGES_DIR}/pause.Dockerfile" "${ctx}" >&2
    rm -rf "${ctx}"
  fi
  if ! docker image inspect "${COREDNS_IMAGE}" >/dev/null 2>&1; then
    docker build -q -t "${COREDNS_IMAGE}" -f "${IMAGES_DIR}/coredns.Dockerfile" "${COREDNS_DIR}" >&2
  fi
  load "${PAUSE_IMAGE}" "${COREDNS_IMAGE}"
}

# ------------------------------------------------------------------ add-ons
start_dns() {
  sed -e "s|@DNS_SERVICE_IP@|${DNS_SERVICE_IP}|g" -e "s|@COREDNS_IMAGE@|${COREDNS_IMAGE}|g" \
    "${IMAGES_DIR}/coredns.yaml" | kubectl apply -f - >&2
  kubectl -n kube-system rollout status deployment/coredns --timeout=180s >&2
}

# ------------------------------------------------------------------ ownership
# The network namespace, cgroups and ${CLUSTER_RUN} are named after the cluster only; the
# folder they belong to is written down, so that a cluster of the same name from another cache
# (another CELERY_FLEET_CACHE) is never taken over or torn down by mistake.
OWNER_FILE="${CLUSTER_RUN}/home"

check_owner() {
  local owner
  owner=$(cat "${OWNER_FILE}" 2>/dev/null) || return 0
  [[ "${owner}" == "${CLUSTER_HOME}" ]] ||
    die "a cluster ${CLUSTER_NAME} of another cache runs here (${owner}): set CELERY_FLEET_CACHE to its cache or pick another CLUSTER_NAME"
}

# ------------------------------------------------------------------ commands
cmd_up() {
  local t0
  t0=$(date +%s)
  [[ $(id -u) == 0 ]] || die "cluster.sh needs root (network namespace, cgroups, mounts)"
  check_owner
  "${CLUSTER_DIR}/build.sh" etcd k8s coredns
  local tool
  for tool in containerd runc ctr nsenter openssl curl gcc; do
    command -v "${tool}" >/dev/null || die "${tool} not found (apt-get install containerd runc util-linux openssl curl gcc)"
  done
  [[ -x "${CNI_BIN_DIR}/bridge" ]] || die "no CNI plugins in ${CNI_BIN_DIR} (apt-get install containernetworking-plugins)"
  mkdir -p "${CLUSTER_HOME}" "${CLUSTER_RUN}"
  echo "${CLUSTER_HOME}" >"${OWNER_FILE}"
  make_pki
  net_up
  start_control_plane
  start_node
  start_dns
  log "cluster ${CLUSTER_NAME} up in $(( $(date +%s) - t0 ))s; KUBECONFIG=${KUBECONFIG_PATH}"
}

node_pids() { # every process of the node: in its cgroups, or a shim of its containerd
  local f p
  for f in /sys/fs/cgroup/*"${CGROUP_ROOT}"; do
    [[ -d "${f}" ]] && { find "${f}" -name cgroup.procs -exec cat {} + 2>/dev/null || true; }
  done
  for p in /proc/[0-9]*; do
    [[ "$(tr '\0' ' ' 2>/dev/null <"${p}/cmdline")" == *"-address ${CONTAINERD_SOCK}"* ]] && echo "${p#/proc/}"
  done
  return 0
}

stop_pidfile() { # stop_pidfile NAME [SIGNAL]
  local f="${PIDS}/$1.pid" pid i
  [[ -f "${f}" ]] || return 0
  pid=$(cat "${f}")
  if pid_running "${pid}"; then
    kill "-${2:-TERM}" "${pid}" 2>/dev/null || true
    for i in $(seq 1 50); do pid_running "${pid}" || break; sleep 0.2; done
    pid_running "${pid}" && kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${f}"
}

unmount_under() { # every mount point below $1, deepest first
  local m
  awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "${m}" 2>/dev/null || true
  done
}

cmd_down() {
  local t0 pids
  t0=$(date +%s)
  check_owner
  if [[ ! -d "${CLUSTER_HOME}" && ! -e "${OWNER_FILE}" ]]; then
    log "no cluster ${CLUSTER_NAME} under ${CACHE_DIR}"
    return 0
  fi
  # kubelet first (it would restart what we kill), then every container process, then the rest
  stop_pidfile kubelet
  stop_pidfile kube-proxy
  pids=$(node_pids | sort -u)
  # shellcheck disable=SC2086
  [[ -z "${pids}" ]] || kill -KILL ${pids} 2>/dev/null || true
  stop_pidfile containerd
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pidfile "${name}"; done
  unmount_under "${CLUSTER_RUN}"
  unmount_under "${CLUSTER_HOME}"
  net_down
  local h
  for h in /sys/fs/cgroup/*"${CGROUP_ROOT}"; do
    [[ -d "${h}" ]] && { find "${h}" -depth -type d -exec rmdir {} + 2>/dev/null || log "cgroup ${h} not removed"; }
  done
  rm -rf "${CLUSTER_RUN}" "${CLUSTER_HOME}"
  pids=$(node_pids | sort -u)
  [[ -z "${pids}" ]] || die "processes of ${CLUSTER_NAME} still running: ${pids//$'\n'/ }"
  log "cluster ${CLUSTER_NAME} down in $(( $(date +%s) - t0 ))s"
}

cmd_env() {
  echo "export KUBECONFIG=${KUBECONFIG_PATH}"
  echo "export PATH=${K8S_DIR}:${HELM_DIR}:\${PATH}"
}

cmd_status() {
  [[ -d "${CLUSTER_HOME}" ]] || { echo "cluster ${CLUSTER_NAME}: absent"; return 1; }
  local name
  echo "cluster ${CLUSTER_NAME}: ${CLUSTER_HOME} (network ${NET_PREFIX}.0.0/16, API ${APISERVER_URL})"
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if alive "${name}"; then echo "  ${name}: running ($(cat "${PIDS}/${name}.pid"))"; else echo "  ${name}: stopped"; fi
  done
  kubectl get nodes -o wide
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  load) shift; load "$@" ;;
  node-exec) shift; in_node "$@" ;;
  *) echo "usage: $0 up|down|env|status|load IMAGE...|node-exec CMD..." >&2; exit 2 ;;
esac
