// Builds the Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
// kube-proxy, kubectl) from the Go module proxy, the way scripts/dapr/go.mod builds Dapr.
// k8s.io/kubernetes cannot be `go install`ed: its go.mod points every k8s.io staging module at
// ./staging/src/..., and replace directives only apply in the main module. k8s/build.sh
// copies this file to a build folder, requires k8s.io/kubernetes at KUBERNETES_VERSION from
// versions.env and adds one replace per staging module, k8s.io/X => k8s.io/X v0.<minor>.<patch>,
// read from that version's own go.mod, so nothing here needs editing when the version moves.
module tiniest-durable-agent/k8s/build/kubernetes

go 1.24.0
