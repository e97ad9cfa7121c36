# End-to-end suite on a real one-node Kubernetes cluster (tests/cluster):
# `make e2e` builds (or reuses) the tools, starts a fresh cluster, runs tests/e2e and tears
# everything down, even on failure; prints how long each phase took. See docs/e2e.md.
#   make e2e E2E_PYTEST_ARGS="-k hpa"     # a subset
#   make e2e KEEP_CLUSTER=1               # leave the cluster up afterwards
E2E_SH := $(dir $(lastword $(MAKEFILE_LIST)))../tests/cluster/e2e.sh

.PHONY: e2e e2e-tools

e2e-tools: ## build the cluster, prometheus-adapter and KEDA (cached; nice'd)
	$(dir $(E2E_SH))build.sh
	$(dir $(E2E_SH))build-autoscalers.sh

e2e: deps ## builds, images -> cluster up -> pytest tests/e2e -> cluster down (always)
	PYTHON=$(CURDIR)/$(PY) E2E_PYTEST_ARGS="$(E2E_PYTEST_ARGS)" KEEP_CLUSTER="$(KEEP_CLUSTER)" E2E_SKIP_BUILDS="$(E2E_SKIP_BUILDS)" $(E2E_SH)
