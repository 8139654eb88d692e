# litvit — set-up and checks. `make demo` and `make test` each create .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned for the venv (local wheels on the build machines; see README).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-fast test-reverse demo clean bench gpu-check

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

# Tests run in a random order (pytest-randomly: files, then the tests in each), so that a test which
# leaves state behind fails CI instead of hiding; the seed is printed last: `make test SEED=N` replays it.
SEED ?=
ORDER := $(if $(SEED),-p randomly --randomly-seed=$(SEED),-p randomly)

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ORDER) tests

# everything but the slow and multi-process tests (markers in pyproject.toml)
test-fast: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ORDER) -m "not slow and not distributed" tests

# the files in reverse order, one process, no shuffling: the other order check the README describes
test-reverse: venv
	$(BIN)/python -m pytest -q -p no:randomly $$(ls tests/test_*.py | sort -r)

demo: venv
	$(BIN)/litvit demo

# the performance figures of README's "Performance" section (2 threads; run on a quiet machine)
bench: venv
	mkdir -p bench
	$(BIN)/litvit bench --dtm-only --threads 2 --reps 7 --out bench/dtm.json --plot bench/dtm.png
	$(BIN)/litvit bench --models lit_ti lit_s --threads 2 --batch-size 16 --img-size 224 --dtype fp32 bf16 --mode infer train --reps 5 --out bench/main.json --plot bench/main.png
	$(BIN)/litvit bench --models lit_ti lit_s --threads 2 --batch-size 16 --img-size 224 --mode infer --dtype fp32 --compile --reps 5 --out bench/compile.json --plot bench/compile.png
	$(BIN)/litvit bench --models lit_ti pvt_s_msa --threads 2 --batch-size 1 --img-size 224 512 1024 --mode infer --dtype fp32 --memory --reps 3 --warmup 1 --out bench/res.json --plot bench/res.png

# CUDA checks for a machine with a GPU (CI has none): parity vs CPU, fp16/bf16 training steps, DTM gradcheck,
# compile (fp32/bf16, infer/train, CUDA graphs), `litvit train/bench --device cuda`. Writes gpu-check.json.
# Uses .venv where it exists, else the machine's python3 with this folder on PYTHONPATH (no install needed).
GPU_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m litvit.cli.gpu_check --out gpu-check.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
