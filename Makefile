# Two entry points: `make demo` (train + evaluate on built-in synthetic data) and `make test`.
# Both create .venv and install pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so nothing below pulls a different (CUDA) build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medseg demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py --out results.json --markdown results.md

clean:
	rm -rf $(VENV) runs .pytest_cache
