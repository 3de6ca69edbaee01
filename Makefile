# Two commands do everything on a fresh machine:
#   make run    set up, train on the embedded synthetic table if no bundle exists, then serve
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The bundle directory for both training and serving: CHURN_MODEL_DIR when set, else models/.
MODEL_DIR ?= $(or $(CHURN_MODEL_DIR),models)

.PHONY: run serve train setup setup-dev test lint bench bench-quality bench-training bench-serving bench-scoring clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt requirements-mlflow.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# `python -m app.serving.trees` compiles the tree kernels into their on-disk cache (a few seconds
# the first time, instant after), so the service itself starts without compiling.
run: setup
	@test -f $(MODEL_DIR)/current || $(BIN)/python -m training --model-dir $(MODEL_DIR)
	@$(BIN)/python -m app.serving.trees
	$(BIN)/python -m app --model-dir $(MODEL_DIR)

serve: setup
	@$(BIN)/python -m app.serving.trees
	$(BIN)/python -m app --model-dir $(MODEL_DIR)

train: setup
	$(BIN)/python -m training --model-dir $(MODEL_DIR) $(ARGS)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup-dev lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: bench-quality bench-training bench-serving

bench-quality: setup-dev
	$(BIN)/python -m bench.quality $(ARGS)

bench-training: setup-dev
	$(BIN)/python -m bench.training

bench-serving: setup-dev
	$(BIN)/python -m bench.serving

bench-scoring: setup-dev
	$(BIN)/python -m bench.scoring $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
