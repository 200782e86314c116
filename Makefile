# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/qaie demo --out runs/demo

# One pytest worker per core (pytest-xdist; a worker that runs out takes queued tests from the others).
# Each keeps torch's default threads: with one, two exactness tests fail under
# ATEN_CPU_CAPABILITY=default (test_two_pass_stages_in_every_runtime, 38-39 dB for >= 60).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache
