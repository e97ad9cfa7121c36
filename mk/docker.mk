# Container image: Docker engine (installed/started when missing), local Debian bases without
# any registry, the image itself and its tests. `-include`d by the main Makefile.
IMAGE ?= celery-fleet:dev
BASE_IMAGE ?= python:3.11-slim-bookworm

.PHONY: docker-engine docker-base image image-local image-test

docker-engine: ## install docker.io + debootstrap if missing, start dockerd if not running
	docker/ensure-docker.sh

docker-base: docker-engine ## debootstrap bookworm bases (cached under .cache/docker/) and docker import them
	docker/base-image.sh python
	docker/base-image.sh services

image: docker-engine ## build the image on the official base (needs a registry)
	docker build -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

image-local: docker-base ## build the image on the local debootstrap base (no registry)
	cp /usr/local/share/ca-certificates/*.crt docker/build-certs/ 2>/dev/null || true
	docker build -f docker/Dockerfile --build-arg BASE_IMAGE=celery-fleet-base:bookworm -t $(IMAGE) .

image-test: venv ## the image tests (build, run web/worker/Redis/PostgreSQL, docker stop mid-task)
	$(VENV)/bin/pytest tests/test_image.py -q
