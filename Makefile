# Set-up and the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-mvmr
# Exact pins (pyproject.toml holds the tested ranges).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test lint bench clean

# `make demo` needs the runtime dependencies only; `make test` adds the test references (extra `dev`)
install: $(STAMP)
install-dev: $(STAMP).dev

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e . $(TORCH_PINS)
	@touch $(STAMP)

$(STAMP).dev: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PINS)
	@touch $(STAMP).dev

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP).dev
	$(BIN)/python -m pytest

lint: $(STAMP).dev
	$(BIN)/ruff check src tests benchmarks scripts *.py
	$(BIN)/ruff format --check src tests benchmarks scripts *.py

bench: $(STAMP)
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf runs lightning_logs .pytest_cache
