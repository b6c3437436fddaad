# Convenience targets. CI runs .ci/run; benchmarks need a local PostgreSQL (see docs/performance.md).
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-quick test lint ci

bench:  ## all benchmarks, full size (a few minutes); BENCH_ARGS="--only drain --runs 20000"
	PYTHONPATH=. $(PYTHON) -m bench $(BENCH_ARGS)

bench-quick:  ## a small smoke run of every benchmark
	PYTHONPATH=. $(PYTHON) -m bench --quick $(BENCH_ARGS)

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

ci:  ## the whole CI run: install, lint, types, docs links, tests on SQLite and PostgreSQL
	.ci/run
