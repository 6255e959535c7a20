# Two entry points for a newcomer: `make demo` and `make test`. Each creates/updates its own venv.
# The demo runs on the default CPU install; the tests also install the `gpu` extra (triton,
# flash-linear-attention) so CI proves the CPU path stays on torch even when Triton is importable.
PYTHON ?= python3
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test

.PHONY: demo test

$(DEMO_VENV)/.installed: pyproject.toml
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml
	test -x $(TEST_VENV)/bin/python || $(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(TEST_VENV)/bin/python -m pip install -q -e ".[test,gpu]"
	touch $@

# Table 1 end to end on the shipped tiny teacher: 4 cells (scratch/pruned x LM/KD), each calibrate ->
# compress -> distill -> lm-eval, then the LaTeX table and loss curves in runs/demo/report/. A rerun skips
# finished cells. (The teacher itself was made by `slim pretrain model=tiny`; see assets/tiny-teacher.)
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/slim grid --output-dir runs/demo ablations/table1.yaml
	$(DEMO_VENV)/bin/slim report --output-dir runs/demo ablations/table1.yaml

# pytest exit 5 means "no tests collected": that is a failure here, never a silent pass.
test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
