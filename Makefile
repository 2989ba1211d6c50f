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
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[test,triton,ray,report,lm]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: install
	$(BIN)/arena demo

test: install
	$(BIN)/python -m pytest -q
