# Local Kubernetes (kwok) cluster for the end-to-end suite; `-include`d by the
# main Makefile. All tools are built from source into $(CELERY_FLEET_CACHE)/bin
# by tests/cluster/build.sh (first run slow, then cached). See tests/cluster/README.md.
CLUSTER_SH_DIR := $(dir $(lastword $(MAKEFILE_LIST)))../tests/cluster

.PHONY: cluster-tools cluster-up cluster-down cluster-env cluster-smoke

cluster-tools: ## build helm, kubeconform, kwok, kwokctl and the Kubernetes control plane (cached)
	$(CLUSTER_SH_DIR)/build.sh

cluster-up: ## start the kwok cluster celery-fleet-e2e (builds tools if needed)
	$(CLUSTER_SH_DIR)/cluster.sh up
	@$(CLUSTER_SH_DIR)/cluster.sh env

cluster-down: ## delete the kwok cluster and every process of it
	$(CLUSTER_SH_DIR)/cluster.sh down

cluster-env: ## print `export KUBECONFIG=...` and PATH for the cluster tools
	@$(CLUSTER_SH_DIR)/cluster.sh env

cluster-smoke: ## up, deploy + scale to 3 fake pods, down
	$(CLUSTER_SH_DIR)/smoke.sh
