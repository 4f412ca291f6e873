# Entry points for developers and CI; the scripts under hack/ do the work.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: cluster cluster-env cluster-status down images venv lint test unit e2e crds

cluster:
	@hack/cluster.sh up

cluster-env:
	@hack/cluster.sh env

cluster-status:
	@hack/cluster.sh status

down:
	@hack/cluster.sh down

images:
	@hack/build-images.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@
