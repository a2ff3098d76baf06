# The README's two commands. Each creates .venv and installs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on disk, not a multi-gigabyte CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,ray]"  # ray: the optional backend, installed to test it
	touch $(STAMP)

install: $(STAMP)

# The default curriculum, end to end; an earlier runs/demo is moved aside, never deleted.
demo: $(STAMP)
	$(BIN)/python scripts/run_curriculum.py --config assets/configs/curriculum_cheetah.yaml --run runs/demo --force

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
