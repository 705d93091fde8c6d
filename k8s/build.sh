#!/usr/bin/env bash
# Builds what the one-node Kubernetes of `make k8s-up` runs, from registries only (no GitHub, no Docker):
#   packages    etcd, containerd, runc, CNI plugins, buildah, mmdebstrap, iptables from Debian packages
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#               from the Go module proxy through k8s/build/kubernetes/go.mod
#   helm        the Helm CLI from the Go module proxy
#   coredns     cluster DNS from the Go module proxy
#   dapr        operator, sentry and sidecar injector through scripts/dapr/go.mod (daprd, placement and
#               scheduler come from `scripts/setup.sh dapr`, which this runs first)
#   pause       the pod sandbox process, k8s/build/pause
#   images      one FROM scratch image per binary, built with buildah into OCI archives
#   app-images  the agent's image from the Dockerfile, the MCP time server's from deploy/mcp-time.Dockerfile,
#               and the stand-ins deploy/stand-ins runs (PostgreSQL, Redis, Zipkin), each on a Debian base
#               made from Debian's packages by mmdebstrap
# Binaries go to .cache/k8s/bin, images to .cache/k8s/images; each piece is skipped when its version
# stamp matches versions.env, so a warm run takes seconds. Builds share the Go caches of `make setup`;
# images are built in a buildah store shared by checkouts, ~/.cache/tiniest-durable-agent/containers.
# Usage: k8s/build.sh [step ...]   (default: all steps)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
source scripts/setup.sh

K8S_CACHE="$PWD/.cache/k8s"
K8S_BIN="$K8S_CACHE/bin"
K8S_IMAGES="$K8S_CACHE/images"
K8S_BUILD="$K8S_CACHE/build"
# Every image is <registry>/<name>:<tag>, as Dapr's Helm chart composes them from global.registry/tag.
DAPR_IMAGE_REGISTRY=localhost/dapr
CLUSTER_IMAGE_REGISTRY=localhost/k8s
# The chart runs every Dapr container as non-root; the images say which user.
IMAGE_UID=65532
wanted_archives=()

# True when piece $1 was built at version $2.
built() {
  [ "$(cat "$K8S_BIN/.$1.version" 2>/dev/null)" = "$2" ]
}

mark_built() {
  echo "$2" >"$K8S_BIN/.$1.version"
}

build_packages() {
  local -a wanted=(etcd-server containerd runc containernetworking-plugins buildah iptables mmdebstrap)
  local -a missing=() package
  for package in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "    ${wanted[*]} installed"
    return
  fi
  as_root apt-get update -qq
  # RUNLEVEL=1 keeps the packages from starting system-wide etcd or containerd; k8s.sh runs its own.
  with_heartbeat "apt-get install ${missing[*]}" .cache/apt-k8s.log \
    as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

module_dir() {
  go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}

build_kubernetes() {
  local version="v$KUBERNETES_VERSION" staging_version module go_mod="$K8S_BUILD/kubernetes.go.mod"
  if built kubernetes "$version"; then
    echo "    kubernetes $version already in $K8S_BIN"
    return
  fi
  # The staging modules (k8s.io/api, client-go, ...) are tagged v0.<minor>.<patch> for v1.<minor>.<patch>.
  staging_version="v0.${KUBERNETES_VERSION#*.}"
  echo "    building kubernetes $version from Go modules (cold: ~17 CPU-minutes; staging modules at $staging_version)"
  mkdir -p "$K8S_BUILD" "$K8S_BIN"
  cp k8s/build/kubernetes/go.mod "$go_mod"
  for module in $(sed -n 's|^\t\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' "$(module_dir "k8s.io/kubernetes@$version")/go.mod"); do
    go mod edit -replace="$module=$module@$staging_version" "$go_mod"
  done
  local ldflags="" package
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $package.gitVersion=$version -X $package.gitMajor=${KUBERNETES_VERSION%%.*}"
    ldflags+=" -X $package.gitMinor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION") -X $package.gitTreeState=clean"
  done
  go_build_pinned "$K8S_BUILD/kubernetes" "${go_mod#"$PWD"/}" "$ldflags" "k8s.io/kubernetes@$version" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
  install -m 0755 "$K8S_BUILD"/kubernetes/bin/* "$K8S_BIN/"
  mark_built kubernetes "$version"
}

build_helm() {
  local version="v$HELM_VERSION" staging_version="v0.${KUBERNETES_VERSION#*.}" module
  if built helm "$version"; then
    echo "    helm $version already in $K8S_BIN"
    return
  fi
  # Helm pins k8s.io modules the proxy here does not all serve; the ones the cluster runs do build.
  local requirements="helm.sh/helm/v3@$version"
  for module in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go component-base kubectl; do
    requirements+=" k8s.io/$module@$staging_version"
  done
  mkdir -p "$K8S_BIN"
  go_build_pinned "$K8S_BUILD/helm" "" "-X helm.sh/helm/v3/internal/version.version=$version" \
    "$requirements" helm.sh/helm/v3/cmd/helm
  install -m 0755 "$K8S_BUILD/helm/bin/helm" "$K8S_BIN/"
  mark_built helm "$version"
}

build_coredns() {
  local version="v$COREDNS_VERSION"
  if built coredns "$version"; then
    echo "    coredns $version already in $K8S_BIN"
    return
  fi
  mkdir -p "$K8S_BIN"
  go_build_pinned "$K8S_BUILD/coredns" "" "-X github.com/coredns/coredns/coremain.GitCommit=$version" \
    "github.com/coredns/coredns@$version" github.com/coredns/coredns
  install -m 0755 "$K8S_BUILD/coredns/bin/coredns" "$K8S_BIN/"
  mark_built coredns "$version"
}

build_dapr() {
  local version="v$DAPR_RUNTIME_VERSION"
  # daprd, placement and scheduler: the same binaries the local stack runs.
  scripts/setup.sh dapr | sed 's/^/  /'
  if built dapr-control-plane "$version"; then
    echo "    dapr operator, sentry, injector $version already in $K8S_BIN"
    return
  fi
  mkdir -p "$K8S_BIN"
  go_build_pinned "$K8S_BUILD/dapr" scripts/dapr/go.mod \
    "-X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION" \
    "github.com/dapr/dapr@$version" -tags allcomponents \
    github.com/dapr/dapr/cmd/operator github.com/dapr/dapr/cmd/sentry github.com/dapr/dapr/cmd/injector
  install -m 0755 "$K8S_BUILD"/dapr/bin/{operator,sentry,injector} "$K8S_BIN/"
  mark_built dapr-control-plane "$version"
}

build_pause() {
  local version
  version=$(cat k8s/build/pause/*.go k8s/build/pause/go.mod | sha256sum | cut -c1-12)
  if built pause "$version"; then
    echo "    pause $version already in $K8S_BIN"
    return
  fi
  mkdir -p "$K8S_BIN"
  (cd k8s/build/pause && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$K8S_BIN/pause" .)
  mark_built pause "$version"
}

# Builds image $1 (registry/name:tag) FROM scratch around binary $2: entrypoint /<name>, CA certificates,
# a writable /tmp and a numeric non-root user, then writes it as an OCI archive for `ctr images import`.
# buildah keeps its layers in a project-owned vfs store: nothing is mounted, nothing needs a runtime.
build_image() {
  local image=$1 binary=$2 archive name container stamp
  name=$(basename "${image%:*}")
  archive="$K8S_IMAGES/$(tr '/:' '__' <<<"$image").oci.tar"
  wanted_archives+=("$archive")
  stamp="$(sha256sum "$binary" | cut -c1-16) uid=$IMAGE_UID"
  if [ -f "$archive" ] && [ "$(cat "$archive.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "    $image is current"
    return
  fi
  local rootfs="$K8S_BUILD/rootfs-$name"
  rm -rf "$rootfs" && mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  install -m 0755 "$binary" "$rootfs/$name"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  printf 'root:x:0:0::/:/%s\nnonroot:x:%s:%s::/tmp:/%s\n' "$name" "$IMAGE_UID" "$IMAGE_UID" "$name" >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$IMAGE_UID" >"$rootfs/etc/group"
  container=$(buildah_ from scratch)
  buildah_ copy --quiet "$container" "$rootfs" / >/dev/null
  buildah_ config --entrypoint "[\"/$name\"]" --user "$IMAGE_UID:$IMAGE_UID" --workingdir / \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$container"
  buildah_ commit --quiet --rm "$container" "$image" >/dev/null
  rm -f "$archive"
  buildah_ push --quiet "$image" "oci-archive:$archive:$image"
  buildah_ rmi "$image" >/dev/null
  echo "$stamp" >"$archive.stamp"
  rm -rf "$rootfs"
  echo "    $image: $(du -h "$archive" | cut -f1)"
}

# buildah's image store is shared by every checkout on the machine, as the Go caches are: a fresh
# clone finds the Debian bases and the agent's image there (building them takes about 5 minutes).
BUILDAH_STORE="${XDG_CACHE_HOME:-$HOME/.cache}/tiniest-durable-agent/containers"

buildah_() {
  # buildah's defaults ask for a runtime and ulimits (for RUN steps) that this machine's runc lacks.
  if [ ! -f "$BUILDAH_STORE/containers.conf" ]; then
    mkdir -p "$BUILDAH_STORE"
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]\n[engine]\nruntime = "runc"\n' \
      >"$BUILDAH_STORE/containers.conf"
  fi
  CONTAINERS_CONF="$BUILDAH_STORE/containers.conf" buildah --root "$BUILDAH_STORE/storage" \
    --runroot "$BUILDAH_STORE/run" --storage-driver vfs "$@"
}

build_images() {
  mkdir -p "$K8S_IMAGES"
  local name archive
  wanted_archives=()
  for name in operator sentry injector; do
    build_image "$DAPR_IMAGE_REGISTRY/$name:$DAPR_RUNTIME_VERSION" "$K8S_BIN/$name"
  done
  for name in daprd placement scheduler; do
    build_image "$DAPR_IMAGE_REGISTRY/$name:$DAPR_RUNTIME_VERSION" "$DAPR_BIN/$name"
  done
  build_image "$CLUSTER_IMAGE_REGISTRY/pause:$(cat "$K8S_BIN/.pause.version")" "$K8S_BIN/pause"
  build_image "$CLUSTER_IMAGE_REGISTRY/coredns:$COREDNS_VERSION" "$K8S_BIN/coredns"
  # Archives of earlier versions of these images: `k8s/cluster.sh up` imports every archive here.
  for archive in "$K8S_IMAGES"/{localhost_dapr_,localhost_k8s_}*.oci.tar; do
    if [ -e "$archive" ] && ! printf '%s\n' "${wanted_archives[@]}" | grep -qxF "$archive"; then
      rm -f "$archive" "$archive.stamp"
      echo "    removed $(basename "$archive") (an earlier version)"
    fi
  done
}

# --- the agent's image and the stand-ins' ------------------------------------------------------

APP_IMAGE_REGISTRY=localhost/tda
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian

# Builds image $1 from the Debian packages $2 (comma-separated) with mmdebstrap, into buildah's store,
# once: a later build reuses it as it is. Documentation and translations are left out (but for man1,
# which Java's postinst links into). The machine's trust store replaces Debian's, so that a build step
# inside (pip) reaches the registries through this network exactly as the machine does.
debian_image() {
  local image=$1 packages=$2 rootfs="$K8S_BUILD/rootfs-$(basename "${1%:*}").tar" container
  if buildah_ inspect --type image "$image" >/dev/null 2>&1; then return; fi
  mkdir -p "$K8S_BUILD"
  with_heartbeat "mmdebstrap $image" "$K8S_BUILD/mmdebstrap.log" \
    mmdebstrap --variant=minbase --include="$packages" --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --setup-hook='mkdir -p "$1/usr/share/man/man1"' \
    "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR"
  container=$(buildah_ from scratch)
  buildah_ add --quiet "$container" "$rootfs" / >/dev/null
  buildah_ copy --quiet "$container" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah_ commit --quiet --rm "$container" "$image" >/dev/null
  rm -f "$rootfs"
  echo "    $image: Debian $DEBIAN_SUITE with $packages"
}

# Writes image $1 from buildah's store to an OCI archive for `k8s/cluster.sh up` to import, and removes
# the archives of the same image at other tags.
save_archive() {
  local image=$1 archive stem
  stem="$K8S_IMAGES/$(tr '/' '_' <<<"${image%:*}")"
  archive="${stem}_${image##*:}.oci.tar"
  [ -f "$archive" ] && return
  rm -f "${stem}"_*.oci.tar
  buildah_ push --quiet "$image" "oci-archive:$archive:$image"
  echo "    $image: $(du -h "$archive" | cut -f1) archive, $(buildah_ images --format '{{.Size}}' "$image") unpacked"
}

# The tag of an image built from a Dockerfile: the files that go into it, hashed.
content_tag() {
  cat "$@" | sha256sum | cut -c1-12
}

# Builds Dockerfile $2 as image $1 on the Debian base $3 (the same file a user builds with `docker
# build`), its archive, and records it in $K8S_IMAGES/$4 for the tests; its earlier tags are removed.
build_dockerfile_image() {
  local image=$1 dockerfile=$2 base=$3 record=$4 old
  if ! buildah_ inspect --type image "$image" >/dev/null 2>&1; then
    with_heartbeat "buildah bud $image" "$K8S_BUILD/$record.log" \
      buildah_ bud --quiet --layers --network host --build-arg "BASE=$base" --tag "$image" --file "$dockerfile" .
  fi
  save_archive "$image"
  for old in $(buildah_ images --format '{{.Name}}:{{.Tag}}' | grep -x "${image%:*}:.*" | grep -vx "$image"); do
    buildah_ rmi "$old" >/dev/null
  done
  echo "$image" >"$K8S_IMAGES/$record"
}

build_app_images() {
  mkdir -p "$K8S_IMAGES"
  local base="$APP_IMAGE_REGISTRY/python-base:$DEBIAN_SUITE" tag
  debian_image "$base" python3,python3-venv,ca-certificates
  tag=$(content_tag Dockerfile .dockerignore requirements.txt durable_agent_{service,tool,mcp}.py service_runner/*.py)
  build_dockerfile_image "$APP_IMAGE_REGISTRY/durable-agent:$tag" Dockerfile "$base" agent-image
  tag=$(content_tag deploy/mcp-time.Dockerfile requirements-mcp.txt requirements-mcp-proxy.txt)
  build_dockerfile_image "$APP_IMAGE_REGISTRY/mcp-time:$tag" deploy/mcp-time.Dockerfile "$base" mcp-time-image
  debian_image "$APP_IMAGE_REGISTRY/redis:$DEBIAN_SUITE" redis-server
  save_archive "$APP_IMAGE_REGISTRY/redis:$DEBIAN_SUITE"
  build_postgres_image
  local zipkin="$APP_IMAGE_REGISTRY/zipkin:$ZIPKIN_VERSION" container
  if ! buildah_ inspect --type image "$zipkin" >/dev/null 2>&1; then
    debian_image "$APP_IMAGE_REGISTRY/java-base:$DEBIAN_SUITE" openjdk-17-jre-headless,ca-certificates
    scripts/setup.sh zipkin | sed 's/^/  /'
    container=$(buildah_ from "$APP_IMAGE_REGISTRY/java-base:$DEBIAN_SUITE")
    buildah_ copy --quiet "$container" "$ZIPKIN_JAR" /zipkin/zipkin.jar >/dev/null
    buildah_ config --entrypoint '["java", "-jar", "/zipkin/zipkin.jar"]' --user 65532:65532 "$container"
    buildah_ commit --quiet --rm "$container" "$zipkin" >/dev/null
  fi
  save_archive "$zipkin"
}

# PostgreSQL from Debian, its user renumbered to 999 as in the official image, which
# deploy/stand-ins/postgres.yaml runs as: initdb refuses a user id that has no name. The cluster the
# package's postinst made is dropped: the stand-in makes its own on its volume.
build_postgres_image() {
  local image="$APP_IMAGE_REGISTRY/postgres:$DEBIAN_SUITE" packages="$APP_IMAGE_REGISTRY/postgres-packages:$DEBIAN_SUITE"
  local container
  if ! buildah_ inspect --type image "$image" >/dev/null 2>&1; then
    debian_image "$packages" "postgresql-$POSTGRESQL_MAJOR"
    container=$(buildah_ from "$packages")
    buildah_ run --network none "$container" -- sh -euc 'groupmod -g 999 postgres && usermod -u 999 -g 999 postgres
      rm -rf /var/lib/postgresql/*/main /etc/postgresql/*/main
      chown -R postgres:postgres /var/lib/postgresql' || {
      buildah_ rm "$container" >/dev/null
      return 1
    }
    buildah_ config --user 999:999 "$container"
    buildah_ commit --quiet --rm "$container" "$image" >/dev/null
    buildah_ rmi "$packages" >/dev/null
  fi
  save_archive "$image"
}

k8s_build_main() {
  mkdir -p .cache
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(packages kubernetes helm coredns dapr pause images app-images)
  local started=$SECONDS name
  for name in "${steps[@]}"; do
    case "$name" in
      packages) step "debian packages" build_packages ;;
      kubernetes) step "kubernetes $KUBERNETES_VERSION" build_kubernetes ;;
      helm) step "helm $HELM_VERSION" build_helm ;;
      coredns) step "coredns $COREDNS_VERSION" build_coredns ;;
      dapr) step "dapr control plane $DAPR_RUNTIME_VERSION" build_dapr ;;
      pause) step "pause" build_pause ;;
      images) step "images" build_images ;;
      app-images) step "agent and stand-in images" build_app_images ;;
      *) echo "k8s-build: unknown step '$name'" >&2; exit 2 ;;
    esac
  done
  echo "k8s build complete in $((SECONDS - started))s"
}

k8s_build_main "$@"
