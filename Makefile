# The README's two commands: `make run` (set up, then the whole DAG on the default profile and
# real data) and `make test` (set up, then the test suite). Both start from nothing.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test setup setup-test ui status bench lint clean

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh test

run: setup
	$(VENV)/bin/lmforge run

test: setup-test
	$(PY) -m pytest -q

ui: setup
	$(VENV)/bin/lmforge ui

status: setup
	$(VENV)/bin/lmforge status

bench:
	bash scripts/setup.sh dev
	# bench/gpu.py is the lent-GPU check (scripts/gpu_check.sh; --cpu-dry-run here), not a CPU bench
	for b in bench/*.py; do [ $$b = bench/gpu.py ] && continue; $(PY) $$b --quick || exit 1; done

lint:
	bash scripts/setup.sh dev
	$(VENV)/bin/ruff check lmdata lmtrain flows tests bench

clean:
	rm -rf $(VENV) .prefect .pytest_cache
