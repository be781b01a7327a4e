# The README's two commands. Each creates .venv on first use, installs torch
# first (TORCH_SPEC overrides it, e.g. TORCH_SPEC="torch==2.4.1" on other
# machines) and then the package with every extra.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/initscope demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q src tests

bench: $(STAMP)
	for f in benchmarks/*.py; do $(VENV)/bin/python $$f || exit 1; done

clean:
	rm -rf $(VENV) initscope-report initscope-experiments .pytest_cache test-artifacts
