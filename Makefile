# The two Quickstart commands: `make demo` and `make test`. Each creates its
# own virtualenv (.venv) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/flask-chest-otel demo

test: $(VENV)/.installed
	./scripts/ensure-servers.sh
	$(PY) -m ruff check flask_chest_otel tests benchmarks deploy
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(VENV)/.installed
	./scripts/ensure-servers.sh --bench
	$(PY) benchmarks/run.py

docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
