# Two commands set up everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FRESH ?= 0
# Extra wheel folders configured for pip on this machine (e.g. the CPU build of torch).
UV_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
# The PyTorch reference (test-torch extra) comes with the CPU torch wheel of PIP_FIND_LINKS;
# without it uv would pull ~5 GB of CUDA packages, so it is left out unless WITH_TORCH=1.
WITH_TORCH ?= $(if $(PIP_FIND_LINKS),1,0)
comma := ,
EXTRAS := $(if $(filter 1,$(WITH_TORCH)),test$(comma)test-torch,test)

.PHONY: install data test test-fast lint bench check-extras demo clean

# Bytecode is compiled once here: where PYTHONDONTWRITEBYTECODE is set, as on this project's CI
# machines, every process would otherwise compile JAX's and the other libraries' sources again
# at import (3.9 s instead of 2.0 s to import seasoning.evaluate, for each of the ~50 processes
# the tests and the demo start). Left out: big packages only the pytest workers import (torch)
# or none does (tfds' dataset builders), ~14 s instead of ~23 s for all (2-core AMD EPYC).
NO_BYTECODE := /(torch|torchgen|functorch|sympy|pyarrow|cv2|tensorflow_datasets/(datasets|image_classification|text|audio|video|translate|structured|object_detection))/
$(VENV)/.installed: setup.py constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(PY) $(UV_LINKS) -c constraints.txt -e '.[$(EXTRAS)]'
	@$(PY) -m compileall -q -j 0 -x '$(NO_BYTECODE)' \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	@[ "$(WITH_TORCH)" = 1 ] || echo "note: PyTorch reference not installed (set WITH_TORCH=1); its cross-check tests will skip"
	@touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's dataset-fashion-mnist (works offline from the mirror).
data:
	@if [ -z "$$FASHION_MNIST_DIR" ] && [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "error: Fashion-MNIST is not in $(FMNIST_DIR) and apt-get is not here to install it."; \
	    echo "  On Debian/Ubuntu: sudo apt-get install -y dataset-fashion-mnist"; \
	    echo "  Elsewhere: put the four *-idx?-ubyte.gz files of Fashion-MNIST in a folder and"; \
	    echo "  set FASHION_MNIST_DIR=that/folder (or make ... FMNIST_DIR=that/folder)."; \
	    exit 1; \
	  fi; \
	  echo "Installing Debian's dataset-fashion-mnist ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# The whole suite (what CI runs), then its 25 slowest tests.
test: install data
	@$(PY) -m compileall -q seasoning tests >/dev/null
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

# Between edits: the unit tests (`-m "not slow"`), under two minutes once installed.
test-fast: install data
	@$(PY) -m compileall -q seasoning tests >/dev/null
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: install
	$(VENV)/bin/ruff check seasoning configs tests benchmarks
	$(VENV)/bin/ruff format --check seasoning configs tests benchmarks
	$(VENV)/bin/shellcheck launch/*.sh launch/*.sbatch benchmarks/*.sh .ci/run

bench: install data
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# What `pip install -e '.[cuda]'` (cuda13, tpu) would install on a Linux GPU or TPU machine,
# for Python 3.11 and 3.12, resolved without installing: a check by hand (~30 s an extra).
check-extras: install
	$(PY) .ci/check_extras.py

# FRESH=1 starts over (deletes runs/demo); without it finished stages are reused.
demo: install data
	@$(PY) -m compileall -q seasoning >/dev/null
	FRESH=$(FRESH) bash launch/demo.sh

clean:
	rm -rf $(VENV) runs .jax_cache
