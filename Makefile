# Entry points for developers and CI; the scripts under hack/ do the work.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: cluster cluster-env cluster-status down images helm venv lint test unit e2e generate demo helm-lint

cluster:
	@hack/cluster-up.sh

cluster-env:
	@hack/cluster-env.sh

cluster-status:
	@hack/cluster-status.sh

# Stops only what `make cluster` started and removes only what it made.
down:
	@hack/cluster-down.sh

images:
	@hack/build-images.sh

# Builds helm alone (no cluster) and prints its path.
helm:
	@hack/helm.sh

# The cluster, the images, a Helm install, and one example Execution per language with its status.
demo: cluster images
	@hack/demo.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Rewrites what is generated from the models: crds/*.yaml (the chart's crds/ link to them), the config
# section of the chart's values.yaml and values.schema.json, and the README's settings table. A unit
# test fails when any of them is out of date.
generate: venv
	$(PY) -m codeexec generate

# The unit tests run it too (tests/unit/test_chart.py), with the same helm.
helm-lint: helm
	@"$$(hack/helm.sh)" lint --strict charts/code-exec

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	hack/lint.sh

unit: venv
	$(PY) -m pytest -m "not e2e"

e2e: venv cluster images
	$(PY) -m pytest -m e2e

# Everything CI runs: lint, type check, helm lint, unit tests (incl. CRD drift) and e2e tests on the local
# cluster, which it brings up (from the cache when there is one) with the images.
test: lint cluster images helm-lint
	$(PY) -m pytest -ra
