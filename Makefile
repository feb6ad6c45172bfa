# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install what is missing. On a machine with no torch, a CPU
# build is installed first so that pip never pulls multi-GB GPU wheels.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || \
	  $(PY) -m pip install -q "$(TORCH_CPU)" || \
	  $(PY) -m pip install -q --index-url $(TORCH_INDEX) torch
	$(PY) -m pip install -q -e ".[dev,bench]"
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gcnshrink demo -o demo-out

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gcnshrink tests examples benchmarks
	$(VENV)/bin/ruff format --check gcnshrink tests examples benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
