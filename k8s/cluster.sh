#!/usr/bin/env bash
# A one-node Kubernetes with Dapr's control plane, run as plain background processes of this project:
#   etcd                    127.0.0.1:12379 (peer 12380), data in .run/k8s/etcd
#   kube-apiserver          10.244.0.1:6443, the address pods reach it on (Service kubernetes, 10.96.0.1)
#   kube-controller-manager, kube-scheduler   health on 127.0.0.1:10257 and :10259
#   containerd              socket .run/k8s/containerd/containerd.sock, images imported from .cache/k8s/images
#   kubelet                 node tda-node; API 10.244.0.1:10250, health 127.0.0.1:10248
#   kube-proxy              iptables mode, health 127.0.0.1:10256
# Pods live on the bridge tda0 (10.244.0.0/24, bridge + host-local CNI plugins), Services in 10.96.0.0/16.
# Nothing is routed to or from the machine's other interfaces: pods get no default route, no NAT,
# and a FORWARD rule drops anything that would leave tda0 (`check_isolation` fails the run otherwise).
# In the cluster: CoreDNS (k8s/coredns.yaml), three volumes for Dapr's scheduler (k8s/volumes.yaml),
# then Dapr's own Helm chart from the github.com/dapr/dapr module at DAPR_RUNTIME_VERSION.
# Usage: k8s/cluster.sh up|down|status|check
# `down` stops every process by its pid file, removes pods' containers, mounts, network namespaces,
# veths, the bridge and every iptables rule the cluster added, and deletes the cluster's state:
# the next `up` starts a new cluster (containerd's image store in .cache/k8s/containerd is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
# A node needs root: network namespaces, a bridge, iptables, mounts, cgroups.
if [ "$(id -u)" -ne 0 ]; then exec sudo "$PWD/k8s/cluster.sh" "$@"; fi
# shellcheck source=../versions.env
source versions.env

ROOT="$PWD"
RUN="$ROOT/.run/k8s"
PIDS="$RUN/pids"
LOGS="$RUN/logs"
PKI="$RUN/pki"
K8S_CACHE="$ROOT/.cache/k8s"
BIN="$K8S_CACHE/bin"
IMAGES="$K8S_CACHE/images"
CONTAINERD_ROOT="$K8S_CACHE/containerd"
CONTAINERD_STATE="$RUN/containerd"
CONTAINERD_SOCK="$CONTAINERD_STATE/containerd.sock"
KUBELET_ROOT="$RUN/kubelet"
export KUBECONFIG="$RUN/admin.kubeconfig"

NODE=tda-node
BRIDGE=tda0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
API_SERVER="https://$NODE_IP:6443"
ETCD_URL=http://127.0.0.1:12379
DAPR_NAMESPACE=dapr-system
# Our iptables chain: first in FORWARD, it keeps pods' traffic on the bridge.
ISOLATION_CHAIN=TDA-ISOLATION
# Folders outside the project that the kubelet, containerd and the CNI plugins write to whatever
# they are told: `down` removes what the cluster put there, then each of them that is left empty.
HOST_DIRS=(/var/lib/kubelet /var/lib/cni /var/log/containers /var/log/pods /etc/cni /run/containerd)
# Processes in start order; `down` stops them in reverse.
SERVICES=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
# Sysctls the node changes; their values before `up` are saved and put back by `down`.
SYSCTLS=(net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory
  kernel.panic kernel.panic_on_oops vm.panic_on_oom kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
cmd=()

log() { echo "  $*"; }
fail() {
  echo "k8s: $*" >&2
  exit 1
}

kubectl() { "$BIN/kubectl" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# --- certificates and kubeconfigs ----------------------------------------------------------------

# Signs a certificate for $1 (file stem) with subject $2 and, for serving certificates, SANs $3.
issue_cert() {
  local name=$1 subject=$2 sans=${3:-}
  [ -f "$PKI/$name.crt" ] && return
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# A kubeconfig for the client certificate $1.
write_kubeconfig() {
  local name=$1
  cat >"$RUN/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tda
  cluster:
    server: $API_SERVER
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: tda
  context: {cluster: tda, user: $name}
current-context: tda
EOF
}

make_pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=tda-kubernetes-ca" -days 365 -sha256 \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  [ -f "$PKI/service-account.key" ] || {
    openssl genrsa -out "$PKI/service-account.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null
  }
  issue_cert kube-apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert kubelet-serving "/CN=$NODE" "IP:$NODE_IP,DNS:$NODE"
  issue_cert admin "/O=system:masters/CN=tda-admin"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager"
  issue_cert kube-scheduler "/CN=system:kube-scheduler"
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  issue_cert kube-proxy "/CN=system:kube-proxy"
  local name
  for name in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do write_kubeconfig "$name"; done
}

# --- node configuration --------------------------------------------------------------------------

pause_image() {
  echo "localhost/k8s/pause:$(cat "$BIN/.pause.version")"
}

write_configs() {
  mkdir -p "$RUN/cni/net.d" "$RUN/cni/ipam" "$KUBELET_ROOT" "$CONTAINERD_STATE" "$CONTAINERD_ROOT"
  cat >"$RUN/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_STATE/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$(pause_image)"
  # root here lacks CAP_SYS_RESOURCE: containers may only raise their OOM score, never lower it.
  restrict_oom_score_adj = true
  # Pods' network namespaces are mounted under the state folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CONTAINERD_STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
    max_conf_num = 1
EOF
  # isGateway stays false: the bridge plugin would switch on forwarding for every interface.
  # The bridge and its address are ours (`make_bridge`); pods get a route to Services and no default.
  cat >"$RUN/cni/net.d/10-tda.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tda",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF
  cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
# root here lacks CAP_SYS_RESOURCE, so the kubelet may not lower its own OOM score.
oomScoreAdj: 0
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
# Pods resolve cluster names only: nothing of the machine's resolv.conf is passed on.
resolvConf: ""
failSwapOn: false
maxPods: 30
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
# Pods see a changed Secret in their volumes within seconds, not a minute: on a first install, Dapr's
# sentry waits for the trust bundle it has just written to appear in its own volume.
syncFrequency: 10s
podLogsDir: $RUN/pod-logs
EOF
}

# --- processes -----------------------------------------------------------------------------------

command_of() {
  case "$1" in
    etcd)
      cmd=(etcd --name tda --data-dir "$RUN/etcd"
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL"
        --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380
        --initial-cluster tda=http://127.0.0.1:12380 --initial-cluster-state new
        --log-level warn --logger zap)
      ;;
    kube-apiserver)
      # Kubelets are reached at their InternalIP: the node's name is looked up nowhere (the
      # default tries the machine's DNS first).
      cmd=("$BIN/kube-apiserver" --etcd-servers "$ETCD_URL"
        --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443
        --service-cluster-ip-range "$SERVICE_CIDR"
        --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key"
        --client-ca-file "$PKI/ca.crt"
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP
        --service-account-issuer https://kubernetes.default.svc.cluster.local
        --service-account-key-file "$PKI/service-account.pub"
        --service-account-signing-key-file "$PKI/service-account.key"
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
        --allow-privileged=true --profiling=false --v=1)
      ;;
    kube-controller-manager)
      cmd=("$BIN/kube-controller-manager" --kubeconfig "$RUN/kube-controller-manager.kubeconfig"
        --authentication-kubeconfig "$RUN/kube-controller-manager.kubeconfig"
        --authorization-kubeconfig "$RUN/kube-controller-manager.kubeconfig"
        --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false
        --service-account-private-key-file "$PKI/service-account.key" --root-ca-file "$PKI/ca.crt"
        --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR"
        --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key"
        --profiling=false --v=1)
      ;;
    kube-scheduler)
      cmd=("$BIN/kube-scheduler" --kubeconfig "$RUN/kube-scheduler.kubeconfig"
        --authentication-kubeconfig "$RUN/kube-scheduler.kubeconfig"
        --authorization-kubeconfig "$RUN/kube-scheduler.kubeconfig"
        --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false --v=1)
      ;;
    containerd)
      cmd=(containerd --config "$RUN/containerd.toml" --log-level warn)
      ;;
    kubelet)
      cmd=("$BIN/kubelet" --config "$RUN/kubelet.yaml" --kubeconfig "$RUN/kubelet.kubeconfig"
        --root-dir "$KUBELET_ROOT" --hostname-override "$NODE" --node-ip "$NODE_IP" --v=1)
      ;;
    kube-proxy)
      # Node ports only on the bridge address; conntrack and route_localnet sysctls left alone.
      cmd=("$BIN/kube-proxy" --kubeconfig "$RUN/kube-proxy.kubeconfig" --hostname-override "$NODE"
        --proxy-mode iptables --cluster-cidr "$POD_CIDR" --bind-address "$NODE_IP"
        --nodeport-addresses "$NODE_IP/32" --iptables-localhost-nodeports=false
        --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249
        --oom-score-adj=0 --conntrack-max-per-core=0
        --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 --v=1)
      ;;
  esac
}

healthy() {
  case "$1" in
    etcd) curl -fs -o /dev/null "$ETCD_URL/health" ;;
    kube-apiserver) curl -fs --cacert "$PKI/ca.crt" -o /dev/null "$API_SERVER/readyz" ;;
    kube-controller-manager) curl -fsk -o /dev/null https://127.0.0.1:10257/healthz ;;
    kube-scheduler) curl -fsk -o /dev/null https://127.0.0.1:10259/healthz ;;
    containerd) ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 ;;
    kubelet) curl -fs -o /dev/null http://127.0.0.1:10248/healthz ;;
    kube-proxy) curl -fs -o /dev/null http://127.0.0.1:10256/healthz ;;
  esac
}

# The pid of service $1 if `up` started it and it still runs that program; empty otherwise.
running_pid() {
  local pid_file="$PIDS/$1.pid" pid program
  [ -f "$pid_file" ] || return 0
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 0
  command_of "$1"
  program=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n 1)
  if [ "$program" = "${cmd[0]}" ]; then echo "$pid"; fi
}

start() {
  local name=$1 started=$SECONDS pid
  pid=$(running_pid "$name")
  if [ -n "$pid" ]; then
    log "$name: already running (pid $pid)"
    return
  fi
  mkdir -p "$PIDS" "$LOGS"
  command_of "$name"
  # setsid: the node's processes are not in the caller's process group, so a Ctrl-C in the
  # terminal that ran `make k8s-up` does not stop them; `down` does, by pid.
  setsid "${cmd[@]}" >>"$LOGS/$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  until healthy "$name"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOGS/$name.log" >&2
      fail "$name exited while starting; log: $LOGS/$name.log"
    fi
    [ $((SECONDS - started)) -lt 120 ] || fail "$name not healthy after 120s; log: $LOGS/$name.log"
    sleep 0.3
  done
  log "$name: up (pid $pid, $((SECONDS - started))s)"
}

stop() {
  local name=$1 pid started=$SECONDS
  pid=$(running_pid "$name")
  rm -f "$PIDS/$name.pid"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || {
      log "$name: stopped (pid $pid, $((SECONDS - started))s)"
      return
    }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  log "$name: killed after 20s (pid $pid)"
}

# --- network -------------------------------------------------------------------------------------

make_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The machine itself reaches Services through the bridge too: without this route, a packet to a
  # Service address that kube-proxy does not translate would follow the default route out.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Routing between pods and Services happens on this bridge only: forwarding is switched on for
  # packets that come in on tda0, never globally, and the chain below drops any that would leave it.
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
  if ! iptables -w -n -L "$ISOLATION_CHAIN" >/dev/null 2>&1; then
    iptables -w -N "$ISOLATION_CHAIN"
    iptables -w -A "$ISOLATION_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP \
      -m comment --comment "tda: pods reach nothing beyond the bridge"
    iptables -w -A "$ISOLATION_CHAIN" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP \
      -m comment --comment "tda: nothing from outside is forwarded to pods"
  fi
  isolation_first
}

# kube-proxy puts its KUBE-FORWARD jump at the top of FORWARD: ours goes back above it.
isolation_first() {
  iptables -w -S FORWARD | sed -n 2p | grep -q -- "-j $ISOLATION_CHAIN\$" && return
  while iptables -w -D FORWARD -j "$ISOLATION_CHAIN" 2>/dev/null; do :; done
  iptables -w -I FORWARD 1 -j "$ISOLATION_CHAIN"
}

save_sysctls() {
  [ -f "$RUN/sysctls.saved" ] && return
  local key
  for key in "${SYSCTLS[@]}"; do echo "$key=$(sysctl -n "$key")"; done >"$RUN/sysctls.saved"
}

# Service traffic between two pods on one bridge needs bridged packets to pass iptables (conntrack
# undoes the Service's DNAT on the reply).
set_sysctls() {
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
}

# The CNI plugins' cache of our pods' results, the kubelet's links to our pods' logs and its device
# plugin socket; then each of HOST_DIRS that holds nothing but empty folders.
clean_host_dirs() {
  local file id dir
  for file in /var/lib/cni/results/tda-*-eth0; do
    [ -e "$file" ] || continue
    id=${file#/var/lib/cni/results/tda-}
    id=${id%-eth0}
    rm -f "$file" "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  for file in /var/log/containers/*.log; do
    if [ -L "$file" ] && [[ "$(readlink "$file")" == "$RUN/"* ]]; then rm -f "$file"; fi
  done
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /etc/cni/net.d/cni.lock
  for dir in "${HOST_DIRS[@]}"; do
    if [ -d "$dir" ]; then find "$dir" -depth -type d -empty -delete 2>/dev/null || true; fi
  done
}

restore_sysctls() {
  [ -f "$RUN/sysctls.saved" ] || return 0
  local line
  while read -r line; do sysctl -qw "$line" || true; done <"$RUN/sysctls.saved"
  rm -f "$RUN/sysctls.saved"
}

# The interfaces of the machine's default routes: where nothing of the cluster may go.
outside_interfaces() {
  { ip -4 route show default; ip -6 route show default; } | sed -n 's/.* dev \([^ ]*\).*/\1/p' | sort -u
}

# Fails if anything would route, forward or NAT the cluster's traffic to the outside interface.
check_isolation() {
  local problems=() iface rules
  rules=$({ iptables-save; ip6tables-save; } 2>/dev/null)
  [ "$(sysctl -n net.ipv4.ip_forward)" = 0 ] || problems+=("net.ipv4.ip_forward is on (forwarding on every interface)")
  for iface in $(outside_interfaces); do
    [ "$(sysctl -n "net.ipv4.conf.$iface.forwarding")" = 0 ] || problems+=("forwarding is on for $iface")
    if grep -E -- "-o $iface( |$)" <<<"$rules" | grep -vq -- "-j DROP"; then
      problems+=("an iptables rule sends traffic out of $iface: $(grep -E -- "-o $iface( |$)" <<<"$rules" | head -n 1)")
    fi
    if grep -E -- "-i $iface( |$)" <<<"$rules" | grep -q -- "-j DNAT"; then
      problems+=("an iptables rule forwards traffic from $iface into the cluster")
    fi
  done
  if ! ip -4 route show "$SERVICE_CIDR" | grep -q "dev $BRIDGE"; then
    problems+=("no route from this machine to the Services ($SERVICE_CIDR) through $BRIDGE")
  fi
  if ! iptables -w -S FORWARD | sed -n 2p | grep -q -- "-j $ISOLATION_CHAIN\$"; then
    problems+=("$ISOLATION_CHAIN is not the first rule of FORWARD")
  fi
  if [ ${#problems[@]} -gt 0 ]; then
    printf 'k8s: the cluster is not kept inside this machine:\n' >&2
    printf '  - %s\n' "${problems[@]}" >&2
    return 1
  fi
  log "isolation: no forwarding or NAT to $(outside_interfaces | paste -sd' '); FORWARD drops what would leave $BRIDGE"
}

# --- cluster contents ----------------------------------------------------------------------------

# Imports each image archive whose manifest containerd does not have under that name yet.
import_images() {
  local archive image digest
  for archive in "$IMAGES"/*.oci.tar; do
    image=$(basename "$archive" .oci.tar | sed 's/_/\//; s/_/\//; s/_\([^_]*\)$/:\1/')
    digest=$(tar -xOf "$archive" index.json | grep -o 'sha256:[0-9a-f]*' | head -n 1)
    if ctr_ images ls "name==$image" | grep -qF "$digest"; then
      continue
    fi
    ctr_ images import "$archive" >/dev/null
    log "imported $image"
  done
}

dapr_chart() {
  local dir
  dir=$(cd scripts/dapr && GOFLAGS=-mod=mod go mod download -json "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir/charts/dapr" ] || fail "no Helm chart in the github.com/dapr/dapr module at $dir"
  echo "$dir/charts/dapr"
}

install_cluster_addons() {
  mkdir -p "$RUN/volumes"
  local i
  for i in 0 1 2; do
    mkdir -p "$RUN/volumes/dapr-scheduler-$i"
    chown 65532:65532 "$RUN/volumes/dapr-scheduler-$i"
  done
  sed -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" -e "s|@COREDNS_IMAGE@|localhost/k8s/coredns:$COREDNS_VERSION|g" \
    k8s/coredns.yaml | kubectl apply -f - >/dev/null
  sed -e "s|@VOLUMES@|$RUN/volumes|g" k8s/volumes.yaml | kubectl apply -f - >/dev/null
  log "applied k8s/coredns.yaml and k8s/volumes.yaml"
}

install_dapr() {
  local chart
  chart=$(dapr_chart)
  # Helm would create the chart's CRDs in the same breath as the pods that read them, and sentry
  # exits if its Configuration's CRD is not served yet: on a first install, create them first and
  # wait until they are. (Once installed, Helm and the operator manage them.)
  if ! kubectl get crd configurations.dapr.io >/dev/null 2>&1; then
    kubectl create -f "$chart/crds" >/dev/null
  fi
  kubectl wait crd --all --for condition=Established --timeout 60s >/dev/null
  "$BIN/helm" upgrade --install dapr "$chart" --namespace "$DAPR_NAMESPACE" --create-namespace \
    --set global.registry=localhost/dapr --set global.tag="$DAPR_RUNTIME_VERSION" \
    --set global.imagePullPolicy=Never --set global.ha.enabled=false \
    --set dapr_sidecar_injector.sidecarImagePullPolicy=Never \
    --set dapr_scheduler.cluster.storageSize=1Gi >"$LOGS/helm.log" 2>&1 ||
    { tail -n 20 "$LOGS/helm.log" >&2; fail "helm install failed; log: $LOGS/helm.log"; }
  log "helm: dapr $DAPR_RUNTIME_VERSION from $chart ($("$BIN/helm" list -n "$DAPR_NAMESPACE" -o json | grep -o '"status":"[a-z]*"'))"
}

# Waits until every pod in namespace $1 is Ready (and there is at least one).
wait_ready() {
  local namespace=$1 limit=$2 started=$SECONDS
  until [ -n "$(kubectl get pods -n "$namespace" -o name 2>/dev/null)" ] &&
    kubectl wait pods --all -n "$namespace" --for condition=Ready --timeout 10s >/dev/null 2>&1; do
    if [ $((SECONDS - started)) -ge "$limit" ]; then
      kubectl get pods -n "$namespace" -o wide >&2 || true
      fail "pods in $namespace not Ready after ${limit}s; logs: $LOGS, kubectl: KUBECONFIG=$KUBECONFIG"
    fi
    sleep 2
  done
  log "$namespace: $(kubectl get pods -n "$namespace" --no-headers | wc -l) pods Ready ($((SECONDS - started))s)"
}

wait_node_ready() {
  local started=$SECONDS
  until kubectl wait node "$NODE" --for condition=Ready --timeout 5s >/dev/null 2>&1; do
    [ $((SECONDS - started)) -lt 120 ] || fail "node $NODE not Ready after 120s; log: $LOGS/kubelet.log"
    sleep 1
  done
  log "node $NODE Ready"
}

# --- teardown ------------------------------------------------------------------------------------

# Kills and removes every container and pod sandbox containerd runs for the cluster, so that their
# shims exit. Their network namespaces, veths and mounts go in the steps after this one.
remove_containers() {
  [ -S "$CONTAINERD_SOCK" ] && healthy containerd || return 0
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
}

# Processes left of the cluster's pods: containerd's shims and whatever runs in a pod's cgroup.
pod_pids() {
  local proc
  for proc in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$proc/cmdline" | grep -qF "$CONTAINERD_SOCK" ||
      grep -q ':/kubepods' "$proc/cgroup" 2>/dev/null; then
      echo "${proc#/proc/}"
    fi
  done
}

# Processes left of the cluster: those of its pods and any whose command line names our run folder.
leftover_pids() {
  local proc
  pod_pids
  for proc in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$proc/cmdline" | grep -qF "$RUN/"; then echo "${proc#/proc/}"; fi
  done
}

# Stops the processes that `$1` lists, by pid: SIGTERM, then SIGKILL for those still there 2 s later.
kill_listed() {
  local pids
  pids=$("$1" | grep -vx "$$" | sort -u || true)
  [ -n "$pids" ] || return 0
  log "stopping leftover processes: $(paste -sd' ' <<<"$pids")"
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  sleep 2
  pids=$("$1" | grep -vx "$$" | sort -u || true)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

unmount_all() {
  local target count=0
  # Deepest first; lazily if busy, so that nothing of the cluster stays mounted.
  while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    count=$((count + 1))
  done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($RUN|$CONTAINERD_ROOT)/" | sort -r)
  [ "$count" -eq 0 ] || log "unmounted $count mounts"
}

remove_network() {
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  # kube-proxy removes its own chains; then every KUBE-* chain the kubelet made, and ours.
  [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup --proxy-mode iptables >/dev/null 2>&1 || true
  local tool table chain number
  for tool in iptables ip6tables; do
    for table in filter nat mangle raw; do
      # Rules of the built-in chains that jump to KUBE-* or TDA-* chains, by number, last first;
      # then those chains, emptied first since they jump to each other.
      for chain in $("$tool" -w -t "$table" -S 2>/dev/null | sed -n 's/^-P \([A-Z]*\) .*/\1/p'); do
        for number in $("$tool" -w -t "$table" -L "$chain" -n --line-numbers 2>/dev/null |
          awk '$2 ~ /^(KUBE-|TDA-)/ {print $1}' | sort -rn); do
          "$tool" -w -t "$table" -D "$chain" "$number"
        done
      done
      for chain in $("$tool" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\|TDA-[^ ]*\)$/\1/p'); do
        "$tool" -w -t "$table" -F "$chain"
      done
      for chain in $("$tool" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\|TDA-[^ ]*\)$/\1/p'); do
        "$tool" -w -t "$table" -X "$chain"
      done
    done
  done
}

# The kubelet's pod cgroups, deepest first.
remove_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# Fails, saying what, if anything of the cluster is left: what `ps`, `mount`, `ip link`, `ip netns`
# and `iptables-save` would show.
check_clean() {
  local left=() pids
  pids=$(leftover_pids | grep -vx "$$" | sort -u || true)
  [ -z "$pids" ] || left+=("processes: $(paste -sd' ' <<<"$pids")")
  if grep -qE " ($RUN|$CONTAINERD_ROOT)/" /proc/self/mountinfo; then left+=("mounts under $RUN or $CONTAINERD_ROOT"); fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then left+=("the bridge $BRIDGE"); fi
  # The bridge plugin names the host ends of pods' veths veth<8 hex digits>.
  local veths
  veths=$(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^veth[0-9a-f]{8}$' || true)
  [ -z "$veths" ] || left+=("veths: $(paste -sd' ' <<<"$veths")")
  if ip netns list 2>/dev/null | grep -q '^cni-'; then left+=("network namespaces: $(ip netns list | paste -sd' ')"); fi
  if { iptables-save; ip6tables-save; } 2>/dev/null | grep -qE 'KUBE-|TDA-'; then left+=("iptables chains KUBE-* or TDA-*"); fi
  if [ ${#left[@]} -gt 0 ]; then
    printf 'k8s: left behind after down:\n' >&2
    printf '  - %s\n' "${left[@]}" >&2
    return 1
  fi
}

# --- commands ------------------------------------------------------------------------------------

check_built() {
  local binary
  for binary in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm; do
    [ -x "$BIN/$binary" ] || fail "$BIN/$binary is missing; run \`make k8s-up\` (it builds it)"
  done
  command -v etcd >/dev/null && command -v containerd >/dev/null || fail "etcd or containerd is missing; run \`make k8s-up\`"
}

up() {
  local started=$SECONDS
  check_built
  mkdir -p "$RUN" "$PIDS" "$LOGS"
  echo "Starting the one-node cluster (logs in $LOGS):"
  save_sysctls
  make_pki
  write_configs
  make_bridge
  set_sysctls
  local name
  for name in "${SERVICES[@]}"; do start "$name"; done
  isolation_first
  import_images
  wait_node_ready
  install_cluster_addons
  wait_ready kube-system 180
  install_dapr
  wait_ready "$DAPR_NAMESPACE" 300
  # Once more: kube-proxy adds its FORWARD jumps, above ours, at its first sync.
  isolation_first
  check_isolation
  echo "Cluster up in $((SECONDS - started))s: export KUBECONFIG=$KUBECONFIG  (kubectl: $BIN/kubectl)"
}

down() {
  echo "Stopping the one-node cluster:"
  # Pods first, while the kubelet and containerd can still tear down their networks and volumes.
  stop kube-proxy
  stop kubelet
  remove_containers
  # Pods that outlived their containerd (if it had crashed), before the API server they watch.
  kill_listed pod_pids
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop "${SERVICES[i]}"; done
  kill_listed leftover_pids
  unmount_all
  remove_network
  remove_cgroups
  clean_host_dirs
  restore_sysctls
  # The cluster's state goes with it; images stay in $CONTAINERD_ROOT for the next `up`.
  rm -rf "$RUN"
  check_clean
  echo "Stopped; nothing of the cluster is left running, mounted or in the network."
}

status() {
  local name pid state=0
  for name in "${SERVICES[@]}"; do
    pid=$(running_pid "$name")
    if [ -n "$pid" ] && healthy "$name"; then
      log "$name: healthy (pid $pid)"
    elif [ -n "$pid" ]; then
      log "$name: running but not healthy (pid $pid, log $LOGS/$name.log)"
      state=1
    else
      log "$name: not running"
      state=1
    fi
  done
  if [ "$state" = 0 ]; then
    kubectl get nodes
    kubectl get pods -A
    check_isolation || state=1
  else
    echo "  the cluster is not (fully) up: \`make k8s-up\` starts it"
  fi
  return "$state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  check) check_isolation ;;
  *)
    echo "usage: $0 up|down|status|check" >&2
    exit 2
    ;;
esac
