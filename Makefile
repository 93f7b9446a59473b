# The two Quickstart commands: `make demo` and `make test`. Each creates the
# virtualenv (.venv) and installs what it needs: the demo the package alone,
# the tests the test and bench extras too.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# The process-level tests (exit, fork, spool, gunicorn, GIL pacing) run on every Python
# the package claims, each in its own virtualenv (.venv-3.X); pyenv's
# interpreters are used when present, else python3.X from PATH.
PROCESS_TESTS := tests/test_exit.py tests/test_spool.py tests/test_gunicorn.py tests/test_pacing.py \
	tests/test_pipeline.py::test_interpreter_exit_flushes_without_an_explicit_shutdown \
	tests/test_pipeline.py::test_a_forked_child_exports_only_its_own_requests \
	tests/test_faults.py::test_sigterm_under_gunicorn_delivers_every_request_to_victoria_metrics \
	tests/test_http_endpoint.py::test_sigterm_to_gunicorn_under_opentelemetry_instrument_delivers_1000_queued_once \
	tests/test_http_endpoint.py::test_sigterm_to_gunicorn_with_a_backlog_past_the_exit_budget_counts_it_in_one_error
OTHER_PYTHONS := 3.10 3.12 3.13
# Only what those tests import (the pins of pyproject's `test` extra): the
# whole extra (Sphinx, mypy, the Flask instrumentation) would double CI's
# install time. The OTel distro (small: opentelemetry-instrument and its
# configurator) runs the SIGTERM tests of the http_payload entry point.
PROCESS_TEST_DEPS := 'pytest>=8' 'hypothesis>=6.100' 'gunicorn>=22' 'opentelemetry-distro>=0.50b0'
python_for = $(firstword $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python) python$(1))

.PHONY: demo test test-pythons lint bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# The demo needs the package's own dependencies only (no test or bench extra).
$(VENV)/.demo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/flask-chest-otel demo

test: $(VENV)/.installed
	./scripts/ensure-servers.sh
	$(PY) -m ruff check flask_chest_otel tests benchmarks deploy scripts
	$(PY) -m mypy
	$(PY) -m pytest
	$(MAKE) test-pythons

.venv-%/.installed: pyproject.toml Makefile
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -e . $(PROCESS_TEST_DEPS)
	touch $@

# Python 3.11 (the default) ran them in `make test` already.
test-pythons: $(foreach version,$(OTHER_PYTHONS),.venv-$(version)/.installed)
	set -e; for version in $(OTHER_PYTHONS); do \
		echo "== Python $$version: process-level tests"; \
		.venv-$$version/bin/python -m pytest -q -p no:cacheprovider $(PROCESS_TESTS); \
	done

bench: $(VENV)/.installed
	./scripts/ensure-servers.sh --bench
	# flask-chest 0.0.10, the peer measured under load: --no-deps, as it pins
	# Flask 3.0.0, influxdb-client 1.39.0 and requests 2.31.0.
	$(PY) -m pip install -q --no-deps flask-chest==0.0.10
	$(PY) benchmarks/run.py

docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(foreach version,$(OTHER_PYTHONS),.venv-$(version)) .pytest_cache .mypy_cache .ruff_cache .hypothesis
