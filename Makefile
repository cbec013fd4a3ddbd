# Two entry points: `make demo` and `make test`. Both install what they need first and are
# idempotent: the stamp files below make a second run install nothing.
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-labelstudio
DEMO_DIR ?= demo-output
# The CPU build of torch that lies on disk here; installed before the project so that the
# project's `torch>=` requirement is already satisfied and pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
LABEL_STUDIO_SPEC ?= label-studio==1.23.2

# Tests and the demo never reach the model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DISABLE_PANDERA_IMPORT_WARNING := True
export LABEL_STUDIO_BIN := $(CURDIR)/$(LS_VENV)/bin/label-studio

.PHONY: install demo test lint format clean-demo

install: $(VENV)/.installed $(LS_VENV)/.installed $(CHROMIUM_STAMP)

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# Label Studio pins its own Django and SDK, so its server lives in a venv of its own.
$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet $(LABEL_STUDIO_SPEC)
	touch $@

# Debian's Chromium and its WebDriver for the browser tests (tests/browser.py; other tools' own browser
# downloads fail here). Nothing to do when both are installed; without apt-get the browser tests skip, saying why.
CHROMIUM_STAMP := $(VENV)/.chromium-installed
SUDO ?= $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM_STAMP): | $(VENV)/.installed
	if test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; then :; \
	elif command -v apt-get >/dev/null; then \
	  { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "WARNING: apt-get could not install chromium + chromium-driver: the browser tests will skip"; \
	else echo "no apt-get: install Chromium and chromedriver at /usr/bin yourself, or the browser tests skip"; fi
	if test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; then touch $@; fi

demo: install
	$(VENV)/bin/lora-pipeline demo --dir $(DEMO_DIR)

test: install lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-demo:
	rm -rf $(DEMO_DIR)
