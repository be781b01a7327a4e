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
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(VENV)/bin/python -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[all]"
	$(VENV)/bin/python -c "import sys, torch; want = '$(TORCH_SPEC)'.split('==')[-1]; \
	  sys.exit(0 if '==' not in '$(TORCH_SPEC)' or torch.__version__.split('+')[0] == want \
	  else 'torch ' + torch.__version__ + ' replaced $(TORCH_SPEC)')"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/initscope demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q src tests

bench: $(STAMP)
	for f in benchmarks/*.py; do $(VENV)/bin/python $$f || exit 1; done

clean:
	rm -rf $(VENV) initscope-report initscope-experiments fsdp2-report .pytest_cache test-artifacts
