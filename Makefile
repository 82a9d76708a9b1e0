# Two commands do all set-up on a fresh machine (Python 3.11; network only to the package registries):
#   make book   — create .venv, install, build the site into _build/html
#   make test   — everything CI checks: lint, unit tests, notebook freshness, nbval, strict build,
#                 offline check
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The datasets are never committed. If the shared data folder sits next to the clone, use it;
# otherwise the loaders download (when online) or fall back to a generated corpus.
SHARED_DATA := $(wildcard ../shared/data)
ifneq ($(SHARED_DATA),)
export LLMBOOK_DATA_DIR ?= $(abspath $(SHARED_DATA))
endif
# No telemetry calls from Hugging Face libraries.
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv vendor book test lint unit slow nbval site offline execute execute-stale clean

venv: $(STAMP)
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

vendor: venv
	$(BIN)/python tools/vendor_js.py

# Strict build: any warning (a broken reference, a notebook that fails to render) is an error.
site: vendor
	$(BIN)/jupyter-book build . --all -W --keep-going

book: site
	@echo "The book is in _build/html/index.html (serve it: python3 -m http.server -d _build/html)"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests, plus tests/test_notebooks.py: conventions and freshness of the stored outputs.
unit: venv
	$(BIN)/pytest tests -q -p no:cacheprovider

# Tests marked slow: loading SmolLM2 (~30 s), running the executor and nbval on tiny notebooks.
slow: venv
	$(BIN)/pytest tests -q -p no:cacheprovider -m slow

# Re-executes every chapter under the smoke profile and compares the outputs of compared cells.
nbval: venv
	LLMBOOK_PROFILE=smoke LLMBOOK_PLOTLY=site $(BIN)/pytest --nbval notebooks -q -p no:cacheprovider \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600

# nbval again on another CPU's arithmetic: compared outputs must be the maths, not this machine's
# rounding. Once with the portable kernels of ATen and OpenBLAS (no AVX), once on one thread
# (OMP_NUM_THREADS for torch and OpenBLAS, LLMBOOK_THREADS for the chapters that set their own
# count). About 6 minutes each on a 2-core CPU.
.PHONY: nbval-other-cpu
nbval-other-cpu: venv
	ATEN_CPU_CAPABILITY=default OPENBLAS_CORETYPE=Prescott $(MAKE) --no-print-directory nbval
	OMP_NUM_THREADS=1 LLMBOOK_THREADS=1 $(MAKE) --no-print-directory nbval

offline: site
	$(BIN)/python tools/check_offline.py _build/html

# The chapters in a real JupyterLab, in headless Chromium (smoke profile): plotly figures drawn,
# widgets answering, no error output or console error, nothing fetched from another host
# (tools/live_check.py; LIVE="01 05e" for some chapters). Installs Debian's chromium when it is
# missing and make runs as root; otherwise the check says how to install it.
.PHONY: live
live: venv
	@test -x /usr/bin/chromium || test "$$(id -u)" != 0 || \
		(apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python tools/live_check.py $(LIVE)

test: lint unit slow nbval offline
	@echo "make test: all checks passed"

# Refresh the committed outputs (book profile) after changing a notebook or utils/.
execute: venv
	$(BIN)/python tools/execute.py $(NOTEBOOKS)

# Only the chapters whose code, or a utils/ module they import, changed since their last run.
execute-stale: venv
	$(BIN)/python tools/execute.py --stale

clean:
	rm -rf _build .pytest_cache .ruff_cache
