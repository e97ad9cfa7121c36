# celery-fleet: `make up` runs the fleet on this machine, `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export CELERY_FLEET_CACHE ?= $(CURDIR)/.cache

APT_PACKAGES := redis-server postgresql prometheus chromium rabbitmq-server docker.io debootstrap

.PHONY: up test deps system-deps venv lint typecheck e2e clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Debian packages the fleet and the tests run for real (installed only when missing).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

deps: system-deps venv

# The bundled example project (example/: fleetsite + jobs) is what `make up` runs; your own project
# runs with `celery-fleet up --app yourproject` from its folder (docs/adopt.md).
EXAMPLE_ENV := PYTHONPATH=$(CURDIR)/example$${PYTHONPATH:+:$$PYTHONPATH} CELERY_FLEET_APP=fleetsite

up: system-deps venv
	$(EXAMPLE_ENV) $(VENV)/bin/celery-fleet up $(ARGS)

lint: venv
	$(VENV)/bin/ruff check src example tests bench
	$(VENV)/bin/ruff format --check src example tests bench

typecheck: venv
	DEBUG=1 $(VENV)/bin/mypy

# Lint and types first (seconds), then the suite (real servers and processes; ~20 min).
test: deps lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .fleet .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
