# Two commands (see README):  make figures   |   make test
# Both create .venv and install the project on first use. TORCH picks the torch requirement:
# the default pins the CPU build that lies on this project's machines; on a CUDA machine use e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb)) $(wildcard notebooks/explorer.ipynb)
export MPLBACKEND ?= Agg
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test unit notebooks figures bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Notebooks under `make test` run at CI size (1 prompt, 2 seeds, 4 denoising steps) and write their
# figures, recordings and tables into .test-artifacts/, leaving the committed ones (from `make figures`) alone.
NB_TEST_ENV := STAS_PROMPTS=1 STAS_SEEDS=2 STAS_STEPS=4 STAS_REAL_PER_PROMPT=2 \
	STAS_FIGURES=$(CURDIR)/.test-artifacts/figures STAS_STATS_DIR=$(CURDIR)/.test-artifacts/stats \
	STAS_RESULTS_DIR=$(CURDIR)/.test-artifacts/results

# all tests: unit tests, then every notebook run fresh through nbmake
test: setup
	$(PY) -m pytest -q tests
	$(if $(NOTEBOOKS),$(NB_TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=1800 $(NOTEBOOKS))

unit: setup
	$(PY) -m pytest -q tests

# the main job: re-run every notebook in place on the default model; each saves its figures to figures/
figures: setup
	@for nb in $(NOTEBOOKS); do echo "== $$nb"; \
	  $(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 $$nb || exit 1; done
	@ls figures

bench: setup
	$(PY) benchmarks/house_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
