# minicoder: the README's two commands are `make demo` and `make test`; everything else is here too.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Docker-backed tests run in CI always, elsewhere when MINICODER_DOCKER_TESTS=1.
DOCKER_TESTS ?= $(if $(filter true,$(CI)),1,$(MINICODER_DOCKER_TESTS))
PYTEST_ARGS ?=

.PHONY: setup demo test lint docker docker-image bench clean-containers help

help:
	@echo "make demo    set up (first time) and run the end-to-end toy pipeline"
	@echo "make test    set up (first time) and run every test (ruff, unit, notebooks; Docker in CI)"
	@echo "make docker  start a Docker engine if none answers and build the task images (Python, JS, Go, Rust)"
	@echo "make bench   run the CPU benchmarks (bench/*.py), results in bench/results/"

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/minicoder demo

lint: setup
	$(VENV)/bin/ruff check minicoder tests bench

test: setup
	@if [ "$(DOCKER_TESTS)" = "1" ]; then $(MAKE) --no-print-directory docker; fi
	MINICODER_DOCKER_TESTS=$(DOCKER_TESTS) $(PY) -m pytest $(PYTEST_ARGS)

docker: setup
	@bash envs/docker_engine.sh
	$(PY) -m minicoder.sandbox.images base
	$(PY) -m minicoder.sandbox.lang_images all

docker-image: docker

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-containers: setup
	$(VENV)/bin/minicoder cleanup
