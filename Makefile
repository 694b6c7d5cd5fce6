# Conduit: `make test` and `make demo` set everything up on a fresh clone.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_FLAGS ?= -p no:cacheprovider --import-mode=importlib -rs
export OMP_NUM_THREADS ?= 2

.PHONY: setup host lint test test-unit test-host test-server demo bench eval clean

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

test: setup host lint
	$(VPY) -m pytest $(PYTEST_FLAGS) tests

test-unit: setup
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/unit

test-host: setup host
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/unit tests/host

test-server: setup host
	$(VPY) -m pytest $(PYTEST_FLAGS) tests/server

demo: setup host
	$(VPY) -m conduit demo --out out

bench: setup host
	$(VPY) -m bench

eval: setup host
	$(VPY) -m eval

clean:
	rm -rf $(VENV) .cache out
