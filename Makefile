# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when it is missing
# and installs the pinned stack into it (constraints.txt), then runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
RUN ?= runs/demo
CONFIG ?= configs/tiny.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-slow bench bench-retrieval seeds repro lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -U pip

# Stamp files re-run the install only when the package metadata or the pins change.
$(VENV)/.installed-base: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(PIP) -e '.[test]'
	touch $@

# torch-sparse (NeighborLoader's backend) and torch-scatter have no wheels for torch 2.13, so both
# are compiled against the installed torch, side by side: torch-scatter compiles one file at a time
# and torch-sparse at most two, so one build alone leaves a core idle. benchmarks/torch_pch.py
# precompiles torch/extension.h (while pip installs the extra), which every one of their files
# parses first, and drops -g (the debug info is stripped at link time anyway).
PCH := $(VENV)/torch-pch
BUILD := MAX_JOBS=2 $(PIP) --no-build-isolation --no-deps
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.torch_pch $(PCH) > $(PCH).flags & pch=$$!; \
	$(PIP) -e '.[bench]' && wait $$pch
	flags="$$(cat $(PCH).flags)"; export CFLAGS="$$flags" CXXFLAGS="$$flags"; \
	$(BUILD) torch-scatter==2.1.2 & scatter=$$!; \
	$(BUILD) torch-sparse==0.6.18 & sparse=$$!; \
	wait $$scatter; a=$$?; wait $$sparse; b=$$?; rm -rf $(PCH) $(PCH).flags; test $$a -eq 0 && test $$b -eq 0
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/star-jax pipeline --config $(CONFIG) --out $(RUN)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check star_jax tests benchmarks

# Tests run in a random order (pytest-randomly); the seed is printed first, and `make test SEED=N`
# replays an order.
test: lint
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "test order: --randomly-seed=$$seed (replay: make test SEED=$$seed)"; \
	$(BIN)/pytest -q -n 2 --dist worksteal -p randomly --randomly-seed=$$seed

test-slow: $(VENV)/.installed-test
	$(BIN)/pytest -q -m slow

# The demo's table for data seeds 0-3 (docs/seeds.md); each seed is a full tiny pipeline run.
seeds: $(VENV)/.installed-base
	$(BIN)/python -m star_jax.pipeline.seeds --config $(CONFIG) --out runs/seeds --seeds 0 1 2 3 --doc docs/seeds.md

# Every check of the report pooled over data seeds 100-103 (docs/repro.md): four tiny pipeline runs,
# one after another (about 40 minutes on 2 cores); rerun to resume, finished runs are skipped.
SEEDS ?= 100 101 102 103
repro: $(VENV)/.installed-base
	$(BIN)/python -m star_jax.pipeline.repro --config $(CONFIG) --out runs/repro --seeds $(SEEDS) --doc docs/repro.md

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run

# faiss indexes vs exact top-k at 600, 5k and 1M jobs (docs/retrieval.md; about 10 minutes on 2 cores).
bench-retrieval: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.retrieval

clean:
	rm -rf runs
