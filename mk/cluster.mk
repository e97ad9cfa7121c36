# Local one-node Kubernetes cluster for the end-to-end suite (real kubelet, containerd, CNI,
# kube-proxy, CoreDNS); `-include`d by the main Makefile. Everything Kubernetes is built from
# source into $(CELERY_FLEET_CACHE)/bin by tests/cluster/build.sh (first run slow, then
# cached). Needs root. See tests/cluster/README.md.
CLUSTER_SH_DIR := $(dir $(lastword $(MAKEFILE_LIST)))../tests/cluster

.PHONY: cluster-tools cluster-up cluster-down cluster-env cluster-smoke

cluster-tools: ## build etcd, Kubernetes (control plane, kubelet, kube-proxy, kubectl), CoreDNS (cached)
	$(CLUSTER_SH_DIR)/build.sh

cluster-up: ## start the cluster celery-fleet-e2e (builds tools if needed)
	$(CLUSTER_SH_DIR)/cluster.sh up
	@$(CLUSTER_SH_DIR)/cluster.sh env

cluster-down: ## stop the cluster: every process, mount, cgroup and its network namespace
	$(CLUSTER_SH_DIR)/cluster.sh down

cluster-env: ## print `export KUBECONFIG=...` and PATH for the cluster tools
	@$(CLUSTER_SH_DIR)/cluster.sh env

cluster-smoke: ## up, deploy + scale to 3 pause pods, down
	$(CLUSTER_SH_DIR)/smoke.sh
