# Two commands on a fresh clone (Python 3.11+, no GPU needed):  make demo   |   make test
# Both create .venv and install arena into it once. TORCH is the torch requirement: the CPU
# build pinned here on CPU-only machines; `make TORCH=torch` keeps whatever build pip picks.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[test,triton,ray,report,lm,eval]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: install
	$(BIN)/arena demo

test: install
	$(BIN)/python -m pytest -q

# Wall-clock benches of the CPU paths, compared with the last saved run: reported, not gated
# (see benchmarks/test_cpu_paths.py for gating on a dedicated runner).
BENCH_STORAGE := results/baselines/pytest-benchmark
BENCH_FLAGS ?= --benchmark-compare
.PHONY: bench-cpu bench-cpu-save
bench-cpu: install
	$(BIN)/python -m pytest -q benchmarks --benchmark-storage=$(BENCH_STORAGE) $(BENCH_FLAGS)

bench-cpu-save: install
	$(BIN)/python -m pytest -q benchmarks --benchmark-storage=$(BENCH_STORAGE) --benchmark-autosave
