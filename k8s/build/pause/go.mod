// The pod sandbox ("pause") process: holds a pod's namespaces open and reaps orphaned children.
module tiniest-durable-agent/k8s/build/pause

go 1.24.0
