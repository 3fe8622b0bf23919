# Two commands set everything up on a fresh machine that has only Python 3.11:
#   make demo   -> virtualenv + install + run the built-in example and print its per-layer table
#   make test   -> virtualenv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/gradlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray,tensorboard]'
	touch $(BIN)/gradlab

install: $(BIN)/gradlab

demo: install
	$(BIN)/gradlab run configs/example.yaml

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) results/*/ .pytest_cache
