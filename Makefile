# Two commands do all set-up on a fresh machine (Python 3.11; network only to the package registries):
#   make book   — create .venv, install, build the site into _build/html
#   make test   — everything CI checks: lint, unit tests, notebook freshness, nbval (also on
#                 portable kernels and one thread), the gpu-profile dry run, the GPU check's CPU
#                 mode, the live notebooks in JupyterLab + Chromium, the Colab-like run at the
#                 version floors, strict build, offline check
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

# Tests marked slow: loading SmolLM2 (~30 s), running the executor and nbval on tiny notebooks,
# drawing bertviz views offline in Chromium (which needs the vendored d3 and jQuery).
slow: vendor
	@test -x /usr/bin/chromium || test "$$(id -u)" != 0 || \
		(apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/pytest tests -q -p no:cacheprovider -m slow

# The prepared GPU check (tools/gpu_check.py) in its CPU mode: every check at tiny sizes, in fp32
# and on the fp16 path (autocast + GradScaler on the CPU), run from a freshly prepared bundle
# (.gpu_check/, git-ignored) so that it uses only what a GPU run carries. Report:
# .gpu_check/gpu_check_cpu.json. About 20 s on a 2-core CPU.
.PHONY: gpu-check-cpu
gpu-check-cpu: venv
	$(BIN)/python tools/gpu_check.py --prepare .gpu_check
	$(BIN)/python .gpu_check/gpu_check.py --device cpu --out .gpu_check/

# Re-executes every chapter under the smoke profile and compares the outputs of compared cells.
nbval: venv
	LLMBOOK_PROFILE=smoke LLMBOOK_PLOTLY=site LLMBOOK_PROGRESS=0 $(BIN)/pytest --nbval notebooks -q -p no:cacheprovider \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600

# nbval again on another CPU's arithmetic: compared outputs must be the maths, not this machine's
# rounding. Once with ATen's portable kernels (no AVX; OPENBLAS_CORETYPE stays as the machine sets it), once on one thread
# (OMP_NUM_THREADS for torch and OpenBLAS, LLMBOOK_THREADS for the chapters that set their own
# count). About 6 minutes each on a 2-core CPU.
.PHONY: nbval-other-cpu
nbval-other-cpu: venv
	ATEN_CPU_CAPABILITY=default $(MAKE) --no-print-directory nbval
	OMP_NUM_THREADS=1 LLMBOOK_THREADS=1 $(MAKE) --no-print-directory nbval

# The gpu profile checked on the CPU: every chapter's configuration and data checks, up to its
# nb.dry_run_stop(), and its estimated peak memory and time on a T4 and an H100 (a table, and
# _build/gpu_dry_run.json). Fails when a check fails or an estimate exceeds a 16 GB T4 / 20 min.
.PHONY: gpu-dry-run
gpu-dry-run: venv
	$(BIN)/python tools/gpu_dry_run.py

offline: site
	$(BIN)/python tools/check_offline.py _build/html

# The chapters in a real JupyterLab, in headless Chromium (smoke profile): plotly figures drawn,
# widgets answering, no error output or console error, nothing fetched from another host
# (tools/live_check.py; LIVE="01 05e" for some chapters). Installs Debian's chromium when it is
# missing and make runs as root; otherwise the check says how to install it.
.PHONY: live
live: vendor
	@test -x /usr/bin/chromium || test "$$(id -u)" != 0 || \
		(apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python tools/live_check.py $(LIVE)

# Every page of the built site in headless Chromium (tools/site_check.py): no console error, no
# failed request, nothing wider than its box, every heatmap drawn with all its cells.
.PHONY: site-check
site-check: site
	@test -x /usr/bin/chromium || test "$$(id -u)" != 0 || \
		(apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python tools/site_check.py

test: lint unit slow nbval nbval-other-cpu gpu-dry-run gpu-check-cpu live compat offline site-check
	@echo "make test: all checks passed"

# Refresh the committed outputs (book profile) after changing a notebook or utils/.
execute: venv
	$(BIN)/python tools/execute.py $(NOTEBOOKS)

# Only the chapters whose code, or a utils/ module they import, changed since their last run.
execute-stale: venv
	$(BIN)/python tools/execute.py --stale

# Colab-like run at the version floors (tools/compat.py): a fresh environment with the
# "preinstalled" torch 2.13.0 and every other package at the oldest version pyproject.toml allows,
# the notebooks' setup cell itself, then every chapter under smoke. Writes _build/compat/report.json.
.PHONY: compat
compat:
	$(PYTHON) tools/compat.py

clean:
	rm -rf _build .pytest_cache .ruff_cache
