# celery-fleet: `make up` runs the fleet on this machine, `make test` runs the test suite,
# `make help` lists every target. Every target installs what it needs first (only what is missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export CELERY_FLEET_CACHE ?= $(CURDIR)/.cache
.DEFAULT_GOAL := help

# Debian packages: what the fleet itself runs (and python3-venv to make its virtualenv) ...
RUNTIME_APT := python3-venv redis-server
# ... and what the test suite runs for real besides.
TEST_APT := $(RUNTIME_APT) postgresql prometheus chromium rabbitmq-server docker.io debootstrap

# `make check`'s tests: pure logic and quick process tests, no server, seconds in all. `make test`
# runs them too, with everything else. (A listed file that does not exist is skipped.)
UNIT_TESTS := $(wildcard tests/test_autoscale_policy.py tests/test_autoscale_hpa_upstream.py \
  tests/test_autoscale_simulate.py tests/test_exporter_events.py tests/test_transport_guard.py \
  tests/test_settings_env.py tests/test_library_boundary.py tests/test_local_workers.py \
  tests/test_up_ports.py tests/test_makefile.py)

.PHONY: help up superuser manage test check deps system-deps runtime-deps venv runtime lint typecheck clean

help: ## list every target with one line each
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^=]*## / {printf "  make %-16s %s\n", $$1, $$2}' \
	  $(MAKEFILE_LIST)

# apt-get install of what is missing from $(1), saying what and how long; $(2): for what.
define apt_install
	@if ! command -v dpkg-query >/dev/null; then echo "not Debian: install$(1) yourself"; exit 0; fi; \
	missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages$(2):$$missing (apt-get; about a minute)"; began=$$SECONDS; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null && echo "installed in $$((SECONDS - began)) s"; \
	fi
endef

runtime-deps: ## Debian packages the fleet runs (redis-server), if missing
	$(call apt_install,$(RUNTIME_APT), for the fleet)

system-deps: ## Debian packages the test suite runs (PostgreSQL, Prometheus, Chromium, RabbitMQ, ...)
	$(call apt_install,$(TEST_APT), for the test suite)

# The runtime: the package with the example's dependencies, no dev tools (a dev install has it all).
runtime: $(VENV)/.runtime ## the virtualenv with what the fleet runs (no dev tools)
$(VENV)/.runtime: pyproject.toml
	@set -e; if [ -e $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ]; then touch $@; exit 0; fi; \
	echo "installing the runtime into $(VENV): celery-fleet and the example's dependencies, no dev tools" \
	  "(pip; usually under a minute)"; began=$$SECONDS; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(VENV)/bin/pip install -q --upgrade pip; $(VENV)/bin/pip install -q -e '.[example]'; \
	echo "runtime installed in $$((SECONDS - began)) s"; touch $@

venv: $(VENV)/.installed ## the virtualenv with the dev tools (tests, ruff, mypy, playwright)
$(VENV)/.installed: pyproject.toml
	@set -e; echo "installing celery-fleet with its dev tools into $(VENV) (pip; 1-4 minutes)"; began=$$SECONDS; \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(VENV)/bin/pip install -q --upgrade pip; $(VENV)/bin/pip install -q -e '.[dev]'; \
	echo "installed in $$((SECONDS - began)) s"; touch $@ $(VENV)/.runtime

deps: system-deps venv ## everything `make test` needs

# The bundled example project (example/: fleetsite + jobs) is what `make up` runs; your own project
# runs with `celery-fleet up --app yourproject` from its folder (docs/adopt.md).
EXAMPLE_ENV := PYTHONPATH=$(CURDIR)/example$${PYTHONPATH:+:$$PYTHONPATH} CELERY_FLEET_APP=fleetsite

up: runtime-deps runtime ## run the whole fleet on this machine (ARGS="--port 8080 --workers 3"); Ctrl-C stops it
	@$(EXAMPLE_ENV) CELERY_FLEET_SUPERUSER_HINT="make superuser" $(VENV)/bin/celery-fleet up $(ARGS)

superuser: runtime ## create an admin account on the data `make up` uses (.fleet/)
	@$(EXAMPLE_ENV) $(VENV)/bin/celery-fleet manage createsuperuser $(ARGS)

manage: runtime ## a Django management command on that data (ARGS="shell", ARGS="dbshell", ...)
	@$(EXAMPLE_ENV) $(VENV)/bin/celery-fleet manage $(ARGS)

lint: venv ## ruff check and ruff format --check
	$(VENV)/bin/ruff check src example tests bench
	$(VENV)/bin/ruff format --check src example tests bench

typecheck: venv ## mypy, strict
	DEBUG=1 $(VENV)/bin/mypy

check: lint typecheck ## the quick loop: lint, types and the unit tests (under 2 minutes)
	$(VENV)/bin/pytest -q -p no:cacheprovider $(UNIT_TESTS)

# Lint and types first (seconds), then the suite (real servers and processes; ~30 min).
test: deps lint typecheck ## the full suite (PYTEST_ARGS="-k up -x" for a part)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean: ## remove the virtualenv, the fleet's data (.fleet/) and tool caches
	rm -rf $(VENV) .fleet .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
