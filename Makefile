# Two commands do everything on a fresh machine:
#   make train    set up .venv, then train the report's model (preset seed) on CIFAR-100
#   make test     set up .venv with the test tools, then run the test suite
#   make test-fast  the tests not marked slow (under 2 minutes on 2 cores), for working
# torch is installed first and on its own: on the project's build machines this takes a CPU
# wheel from local disk; elsewhere pip takes the build for your platform (CUDA on Linux).

PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
PRESET      ?= seed
ARGS        ?=
# TensorFlow is only the oracle of the Keras-equality tests; TEST_EXTRAS=test runs without
# it (those tests skip, saying why).
TEST_EXTRAS ?= test,oracle
# pytest processes for `make test` (pytest-xdist; each test file runs whole in one of them).
# Two on the 2-core build VM finish the suite in 11 min where one took about 14: much of it
# waits on subprocesses, servers and a browser, and a second process uses that time.
JOBS        ?= auto
BIN          = $(VENV)/bin

.PHONY: setup train test test-fast lint clean

$(BIN)/cifar100: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/cifar100
	$(BIN)/python -m pip install --quiet -e ".[$(TEST_EXTRAS)]"
	touch $@

setup: $(BIN)/cifar100

train: setup
	$(BIN)/cifar100 train --preset $(PRESET) $(ARGS)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile $(ARGS)

test-fast: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) .pytest_cache
