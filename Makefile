# `make demo` and `make test` work on a fresh clone: they build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sasa-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sasa profile
	@echo "== training sa_resnet26 on the embedded digits set (CPU, digits recipe: 10 epochs) =="
	$(BIN)/sasa train --model sa_resnet26 --data digits --out runs/demo-sa_resnet26 --device cpu --force
	$(BIN)/sasa eval --checkpoint runs/demo-sa_resnet26/best.safetensors --data digits --device cpu \
		--out runs/demo-sa_resnet26/eval.json
	@echo "run directory: runs/demo-sa_resnet26 (metrics.csv, curves.png, best.safetensors)"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	SASA_SLOW=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# 1-thread figures in CPU time (robust on a shared machine), 2-thread ones in wall time; JSON in
# bench_results/, and the README's speed tables rewritten from it.
BENCH_THREADS ?= 1 2
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_op.py --threads $(BENCH_THREADS) --clock process --skip chunked
	$(BIN)/python benchmarks/bench_models.py --threads $(BENCH_THREADS) --clock process
	$(BIN)/python benchmarks/update_readme.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
