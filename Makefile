# minicoder: the README's two commands are `make demo` and `make test`; everything else is here too.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Docker-backed tests run in CI always, elsewhere when MINICODER_DOCKER_TESTS=1.
DOCKER_TESTS ?= $(if $(filter true,$(CI)),1,$(MINICODER_DOCKER_TESTS))
PYTEST_ARGS ?=

.PHONY: setup demo test lint notebooks lab site doctor docker docker-image bench clean-containers help

help:
	@echo "make demo    set up (first time) and run the end-to-end toy pipeline"
	@echo "make test    set up (first time) and run every test (ruff, unit, notebooks; Docker in CI)"
	@echo "make docker  start a Docker engine if none answers and build the base task image"
	@echo "make bench   run the CPU benchmarks (bench/*.py), results in bench/results/"
	@echo "make lab     student copies of the notebooks in labs/ (solutions removed, checkers kept)"
	@echo "make site    execute the notebooks and export them to site/*.html (figures and widgets, no CDN)"
	@echo "make notebooks  regenerate notebooks/*.ipynb from their py:percent sources (notebooks/*.py)"

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/minicoder demo

lint: setup
	$(VENV)/bin/ruff check minicoder tests bench notebooks

# The .py sources are what people edit; --update keeps the committed notebooks' cell ids.
notebooks: setup
	@for f in notebooks/[0-9][0-9]_*.py; do $(VENV)/bin/jupytext --to ipynb --update -q "$$f" || exit 1; done

lab: setup
	$(PY) -m minicoder.course --out labs

site: setup
	$(PY) -m minicoder.viz.site --out site

doctor: setup
	$(VENV)/bin/minicoder doctor

test: setup
	@if [ "$(DOCKER_TESTS)" = "1" ]; then $(MAKE) --no-print-directory docker; fi
	MINICODER_DOCKER_TESTS=$(DOCKER_TESTS) $(PY) -m pytest $(PYTEST_ARGS)

docker: setup
	@bash envs/docker_engine.sh
	$(VENV)/bin/minicoder images base

docker-image: docker

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-containers: setup
	$(VENV)/bin/minicoder cleanup
