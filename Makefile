# Two entry points for a newcomer: `make demo` and `make test`. Each creates/updates its own venv and installs the
# committed lock (locks/*.txt) into it, exactly: no install here resolves today's releases.
# The demo runs on the default CPU install; the tests also install the `gpu` extra (triton,
# flash-linear-attention) so CI proves the CPU path stays on torch even when Triton is importable.
# Maintainers: `make lock` re-resolves the lock from pyproject.toml's ranges; `make test-latest` and
# `make test-oldest` run the default suite on the newest and on the lowest versions those ranges allow.
PYTHON ?= python3
DEMO_VENV ?= .venv
TEST_VENV ?= .venv-test
LATEST_VENV ?= .venv-latest
OLDEST_VENV ?= .venv-oldest
LOCK_VENV ?= .venv-lock
# The default suite: the slow end-to-end set runs in `make test` and CI, not in the lanes.
LANE_PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-unit lock test-latest test-oldest

$(DEMO_VENV)/.installed: pyproject.toml locks/demo.txt locks/sync.py
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python locks/sync.py locks/demo.txt
	touch $@

$(TEST_VENV)/.installed: pyproject.toml locks/test.txt locks/sync.py
	test -x $(TEST_VENV)/bin/python || $(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python locks/sync.py locks/test.txt
	touch $@

# Table 1 end to end on the shipped tiny teacher: 4 cells (scratch/pruned x LM/KD), each calibrate ->
# compress -> distill -> lm-eval, then the LaTeX table and loss curves in runs/demo/report/. A rerun skips
# finished cells. (The teacher itself was made by `slim pretrain model=tiny`; see assets/tiny-teacher.)
demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/slim grid --output-dir runs/demo ablations/table1.yaml
	$(DEMO_VENV)/bin/slim report --output-dir runs/demo ablations/table1.yaml

# pytest exit 5 means "no tests collected": that is a failure here, never a silent pass.
define run_pytest
	$(1)/bin/python -m pytest $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

# ruff first (seconds; its configuration is in pyproject.toml), then the suite.
test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(call run_pytest,$(TEST_VENV),$(PYTEST_ARGS))

# The unit tests alone (no command, worker process or whole pipeline; no README or results check): a quick loop.
test-unit: $(TEST_VENV)/.installed
	$(call run_pytest,$(TEST_VENV),-m "not e2e and not docs and not slow" $(PYTEST_ARGS))

# Re-resolve locks/*.txt with a throwaway venv's newest pip (through the machine's pip configuration).
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python locks/lock.py

# The newest releases pyproject.toml's ranges allow, in a throwaway venv: run before bumping the lock. (Without
# build isolation: an isolated editable build leaves <project>.egg-info at the root, whose metadata would shadow
# the install's entry points for Python started there.)
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --no-build-isolation -e ".[test,gpu]"
	$(call run_pytest,$(LATEST_VENV),$(LANE_PYTEST_ARGS))

# The lowest versions pyproject.toml declares for our direct dependencies (locks/oldest.py), the rest resolved
# under them: the lower bounds are versions that were tested.
test-oldest:
	rm -rf $(OLDEST_VENV) && $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(OLDEST_VENV)/bin/python locks/oldest.py > $(OLDEST_VENV)/oldest-constraints.txt
	$(OLDEST_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[test,gpu]" \
		-c $(OLDEST_VENV)/oldest-constraints.txt
	$(call run_pytest,$(OLDEST_VENV),$(LANE_PYTEST_ARGS))
