# Two commands do everything on a fresh machine:
#   make train    set up .venv, then train the report's model (preset seed) on CIFAR-100
#   make test     set up .venv, then run the test suite
# torch is installed first and on its own: on the project's build machines this takes a CPU
# wheel from local disk; elsewhere pip takes the build for your platform (CUDA on Linux).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PRESET ?= seed
ARGS   ?=
BIN     = $(VENV)/bin

.PHONY: setup train test lint clean

$(BIN)/cifar100: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/cifar100

train: setup
	$(BIN)/cifar100 train --preset $(PRESET) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache
