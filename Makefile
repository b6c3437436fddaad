# Convenience targets. CI runs .ci/run; benchmarks need a local PostgreSQL (see docs/performance.md).
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=
CHAOS_ARGS ?=

.PHONY: bench bench-quick chaos test lint ci

bench:  ## all benchmarks, full size (a few minutes); BENCH_ARGS="--only drain --runs 20000"
	PYTHONPATH=. $(PYTHON) -m bench $(BENCH_ARGS)

bench-quick:  ## a small smoke run of every benchmark
	PYTHONPATH=. $(PYTHON) -m bench --quick $(BENCH_ARGS)

chaos:  ## the chaos suite, 10 minutes of faults on a PostgreSQL cluster of its own (docs/chaos.md)
	PYTHONPATH=. $(PYTHON) -m chaos $(CHAOS_ARGS)

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

ci:  ## the whole CI run: install, lint, types, docs links, tests on SQLite and PostgreSQL
	.ci/run
