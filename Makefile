# Two commands do all the set-up on a fresh machine:
#   make demo   - virtual env, install, build the default models, run the main job
#   make test   - same set-up (with the dev extra), then lint + the whole test suite
# Built models are cached under the pmatch home ($PMATCH_HOME, default ~/.local/share/pmatch).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Installs go over a network that sometimes drops a download part-way (CI failed once on a 55 MB wheel after
# pip's own retries): pip resumes an interrupted download up to PIP_RESUME_RETRIES times (pip >= 25.1; older
# pip ignores the variable), and PIP_TRY reruns the whole install a few times before giving up.
export PIP_RESUME_RETRIES ?= 20
export PIP_RETRIES ?= 10
COMMA := ,
PIP_TRY = n=0; until $(1); do n=$$((n+1)); [ $$n -lt 4 ] || exit 1; echo "install failed (try $$n of 4); again in 20 s" >&2; sleep 20; done

.PHONY: demo test test-clip lint models venv bench clean browser review-demo reliability-report

$(VENV)/.build-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call PIP_TRY,$(BIN)/python -m pip install -q --upgrade pip)
	$(call PIP_TRY,$(BIN)/python -m pip install -q -e '.[build$(COMMA)review]')
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.build-installed
	$(call PIP_TRY,$(BIN)/python -m pip install -q -e '.[dev]')
	touch $@

venv: $(VENV)/.dev-installed

models: $(VENV)/.build-installed
	$(BIN)/pmatch models build

demo: models
	$(BIN)/pmatch demo

# The review page on the demo's review band (after make demo).
review-demo: $(VENV)/.build-installed
	$(BIN)/pmatch review demo_out/shop.duckdb --image-root demo_out/data

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# test-clip runs first: its venv (a CUDA build of torch, ~6.6 GB) then need not sit on the disk beside the main
# venv and the models. DROP_CLIP_VENV=1 (CI) removes it once its tests passed: CI failed once with
# 'No space left on device' while installing it after the main venv.
test: test-clip $(VENV)/.dev-installed models lint browser
	$(BIN)/python -m pytest -q

# The review page's browser test (tests/test_review_browser.py) drives Debian's chromium with Selenium.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  n=0; until $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium chromium-driver; do \
	    n=$$((n+1)); [ $$n -lt 4 ] || exit 1; echo "apt-get failed (try $$n of 4); again in 20 s" >&2; sleep 20; done; \
	fi

# OpenCLIP export (pmatch models export-openclip) is tested in its own venv: open_clip needs torchvision,
# which does not import beside the torch 2.13.0 of the build extra (the clip extra pins torch 2.14.1).
CLIP_VENV ?= .venv-clip

$(CLIP_VENV)/.clip-installed: pyproject.toml
	test -x $(CLIP_VENV)/bin/python || $(PYTHON) -m venv $(CLIP_VENV)
	$(call PIP_TRY,$(CLIP_VENV)/bin/python -m pip install -q --upgrade pip)
	$(call PIP_TRY,$(CLIP_VENV)/bin/python -m pip install -q -e '.[clip]' pytest)
	touch $@

DROP_CLIP_VENV ?= 0

test-clip: $(CLIP_VENV)/.clip-installed
	$(CLIP_VENV)/bin/python -m pytest tests/test_openclip.py -q
	@if [ "$(DROP_CLIP_VENV)" = 1 ]; then echo "removing $(CLIP_VENV) (DROP_CLIP_VENV=1)"; rm -rf $(CLIP_VENV); fi

# docs/reliability.md: the bad-input / crash / concurrency / hostile-argument tests, recorded and rendered
reliability-report: $(VENV)/.dev-installed models
	mkdir -p build
	PMATCH_RELIABILITY_LOG=build/reliability.json $(BIN)/python -m pytest -q tests/test_input_types.py \
		tests/test_reliability_corpus.py tests/test_reliability_properties.py tests/test_reliability_hostile.py \
		tests/test_reliability_crash.py tests/test_reliability_resources.py || true
	$(BIN)/python tests/render_reliability.py docs/reliability.md build/reliability.json

bench: $(VENV)/.dev-installed models
	$(BIN)/python benchmarks/bench_encoders.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
