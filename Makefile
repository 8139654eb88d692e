# litvit — set-up and checks. `make demo` and `make test` each create .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned for the venv (local wheels on the build machines; see README).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

demo: venv
	$(BIN)/litvit demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
