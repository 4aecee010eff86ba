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

.PHONY: setup test test-tiny unit notebooks figures bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Notebooks under `make test` run at CI size (1 prompt, 2 seeds, 4 denoising steps) and write their
# figures, recordings and tables into .test-artifacts/, leaving the committed ones (from `make figures`) alone.
ART := $(CURDIR)/.test-artifacts
NB_TEST_ENV := STAS_PROMPTS=1 STAS_SEEDS=2 STAS_STEPS=4 STAS_REAL_PER_PROMPT=2 \
	STAS_FIGURES=$(ART)/figures STAS_STATS_DIR=$(ART)/stats STAS_RESULTS_DIR=$(ART)/results
NBMAKE := $(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=1800
# Notebooks 01-04 also run on real-checkpoint directories: tiny random Wan and CogVideoX pipelines
# (CogVideoX with a 16-token text encoder) written by `python -m stas save-tiny` at test time.
NB_TINY := $(sort $(wildcard notebooks/0[1-4]_*.ipynb))
TINY_ENV = STAS_PROMPTS=1 STAS_SEEDS=2 STAS_HEIGHT=32 STAS_WIDTH=32 STAS_FRAMES=9 STAS_STEPS=4 \
	STAS_FIGURES=$(ART)/tiny-$(1)/figures STAS_STATS_DIR=$(ART)/tiny-$(1)/stats STAS_MODEL=$(ART)/tiny-$(1)/model

# all tests: unit tests, then every notebook run fresh through nbmake (house model), then 01-04 on tiny dirs
test: setup
	$(PY) -m pytest -q tests
	$(if $(NOTEBOOKS),$(NB_TEST_ENV) $(NBMAKE) $(NOTEBOOKS))
	$(MAKE) test-tiny

test-tiny: setup
	@for fam in wan cogvideox; do \
	  rm -rf $(ART)/tiny-$$fam && $(PY) -m stas save-tiny $$fam $(ART)/tiny-$$fam/model >/dev/null || exit 1; \
	  env $(call TINY_ENV,$$fam) $(NBMAKE) $(NB_TINY) || exit 1; done

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
