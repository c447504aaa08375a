# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
# Both build an isolated virtualenv first. TORCH picks the torch build: the default is
# the CPU wheel; `make TORCH=torch` keeps whatever index/GPU build pip resolves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: install browser demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,face]'
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/imambig demo

# Debian's Chromium for the Prefect UI test; without root it is skipped (the test too).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "chromium not installed: the browser test will skip"

test: install browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
