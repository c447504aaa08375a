# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
# Both build an isolated virtualenv first. TORCH picks the torch build: the default is
# the CPU wheel; `make TORCH=torch` keeps whatever index/GPU build pip resolves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/imambig demo

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
