# Conduit: `make test` and `make demo` set everything up on a fresh clone.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_FLAGS ?= -p no:cacheprovider --import-mode=importlib -rs
export OMP_NUM_THREADS ?= 2

CHECKERS ?= .venv-checkers

.PHONY: setup host lint checkers test test-unit test-host test-server test-editor demo bench eval clean

$(VENV)/.ready: requirements-dev.txt constraints-dev.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH_PINS)
	$(VPY) -m pip install -q -r requirements-dev.txt -c constraints-dev.txt
	touch $@

setup: $(VENV)/.ready

host: setup
	$(VPY) -m conduit host

lint: setup
	$(VPY) -m ruff check .

# The registry's own tools (comfy-cli's `comfy node pack` / `validate`, comfy-test's lint) in their own venv: their
# dependencies are not ComfyUI's. tests/unit/test_packaging.py runs them on the packed archive (offline); when
# PyPI cannot be reached the install is reported and those tests skip, saying so.
$(CHECKERS)/.ready: constraints-checkers.txt
	$(PY) -m venv $(CHECKERS)
	$(CHECKERS)/bin/python -m pip install -q comfy-cli comfy-test ruff -c constraints-checkers.txt \
		&& touch $@ || echo "make checkers: could not install comfy-cli/comfy-test; the registry checks will skip"

checkers: $(CHECKERS)/.ready

test: setup host lint checkers
	$(VPY) -m pytest $(PYTEST_FLAGS) tests

test-unit: setup
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/unit

test-host: setup host
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/unit tests/host

test-server: setup host
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/server

# The real editor in the system's headless Chromium (apt-get install chromium); `make test` runs it too, and it
# skips, saying so, where no browser is installed. Screenshots go to tests/editor/out/.
test-editor: setup host
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/editor

demo: setup host
	$(VPY) -m conduit demo --out out

bench: setup host
	$(VPY) -m bench

eval: setup host
	$(VPY) -m eval

clean:
	rm -rf $(VENV) $(CHECKERS) .cache out
