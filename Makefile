# metasched — every target sets up its own virtualenv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# one BLAS / torch thread per process: tiny models are overhead-bound, and two thread
# pools (torch + OpenBLAS) side by side were seen to collapse throughput
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU wheel, pinned: a loose torch requirement would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,peers,ray]'
	# Fashion-MNIST IDX files for the `fashion` task (Debian package dataset-fashion-mnist);
	# skipped without apt-get or on failure: the task then raises an error naming the package
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
		&& command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
		 || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
		|| echo "warning: dataset-fashion-mnist not installed; the fashion task is unavailable"; \
	fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metasched demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -m "not slow" -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

bench: $(STAMP)
	$(PY) benchmarks/bench_env.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_torch_tasks.py
	$(PY) benchmarks/bench_multicopy.py
	$(PY) benchmarks/bench_adapter.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
