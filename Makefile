# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv (or reuse it) and install the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU-capable torch wheels that this project is developed and tested against.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.sktransfer-installed

.PHONY: venv demo test test-all bench lint docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sktransfer demo

test: $(STAMP)
	$(PY) -m pytest -q

# Slow end-to-end accuracy runs on ../shared/data as well.
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/extract_throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check sktransfer tests benchmarks

# The documentation site (mkdocs.yml, docs/), strict: any warning is an error. Output in site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist *.egg-info
