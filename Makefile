# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when missing; the torch pins are the known-good builds for the reference machine
# (pyproject.toml itself only asks for ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs docs-build bench gpu-check soak mutants clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the browser test will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ctran demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The documentation site (MkDocs + Material): `make docs` serves it at http://127.0.0.1:8000 and rebuilds on
# every edit; `make docs-build` writes it to site/ with --strict (`make test` runs the same strict build).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Every benchmark, ours vs the official formulation (about 10 min on 2 cores; uses runs/demo/ctran.pt if present).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: parity, inference, training, label scaling and a torchrun/NCCL run, in under 8 minutes;
# writes benchmarks/results/gpu.json and gpu.md. Exits 2 with a message when no GPU is visible.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# 60 s of concurrent loopback clients against `ctran serve` with the demo checkpoint (run `make demo` first).
soak: $(STAMP)
	$(BIN)/python benchmarks/serve_soak.py --checkpoint runs/demo/ctran.pt --seconds 60

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml) with the fast tests; writes
# runs/mutants/report.md and report.json (survivors listed). Not part of `make test`. A stopped run resumes:
# mutmut keeps its results in mutants/ and re-checks only functions that changed (`make clean` starts over).
mutants: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(or $(JOBS),2) || true
	$(BIN)/python scripts/mutation_report.py --out runs/mutants

clean:
	rm -rf runs .pytest_cache mutants site
