# Two commands set everything up on a fresh machine that has only Python 3.11:
#   make demo   -> virtualenv + install + run the built-in example and print its per-layer table
#   make test   -> virtualenv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast bench papers install clean claims claims-all docs

$(BIN)/gradlab: pyproject.toml constraints.txt anchors-no-deps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray,tensorboard,lightning,mlflow,docs,anchors]'
	$(BIN)/python -m pip install -q --no-deps -r anchors-no-deps.txt
	$(BIN)/python -m compileall -q gradlab  # bytecode for the editable install, where PYTHONDONTWRITEBYTECODE keeps Python from writing it
	touch $(BIN)/gradlab

install: $(BIN)/gradlab

demo: install
	$(BIN)/gradlab run configs/example.yaml

# the suite on every core (pytest-xdist: a worker per core, each test file on one worker, one torch
# thread each); test-fast leaves out the end-to-end runs marked slow
test: install
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

test-fast: install
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder -m 'not slow'

bench: install
	$(BIN)/python benchmarks/overhead.py

# the documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or reference fails
# (NO_MKDOCS_2_WARNING: mkdocs-material prints no end-of-life banner)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# every configs/papers/ result: paper, quantity, published, predicted, measured, held (exit 1 if one fails)
papers: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python tools/papers.py

clean:
	rm -rf $(VENV) results/*/ .pytest_cache

# The claims of the shipped configs, run and checked. `make claims`: configs/claims/ (the lecture's
# BatchNorm claims, about a minute of compute on 2 cores: fits in CI). `make claims-all`: also the
# other shipped sweeps whose comments state results (minutes each; MNIST's LRN is slow on a CPU).
# CLAIMS=... picks configs; the runs stay in results/claims/<time>/.
CLAIMS ?= $(wildcard configs/claims/*.yaml)
CLAIMS_ALL = $(CLAIMS) $(shell grep -l '^claims:' configs/*.yaml)
claims-all:
	@$(MAKE) --no-print-directory claims CLAIMS="$(CLAIMS_ALL)"
claims: install
	@out=results/claims/$$(date +%Y%m%d-%H%M%S); status=0; \
	for config in $(CLAIMS); do \
	  echo "gradlab run $$config" >&2; \
	  OMP_NUM_THREADS=1 $(BIN)/gradlab run $$config --jobs 2 --quiet --out $$out >/dev/null || status=1; \
	done; \
	$(BIN)/gradlab check $$out && exit $$status
