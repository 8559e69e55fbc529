# vmae — install, test, lint.
# TORCH_SPEC picks the torch build installed first; the default is the CPU build.
# People with GPUs: `make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The README's first command: set up, then classify the bundled clips with the bundled model, offline.
demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/vmae classify examples/motion/*.mp4 --model models/motion --top-k 3

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
