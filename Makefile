# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if needed, installs tcam-ray, runs the demo job
#   make test   creates .venv if needed, installs tcam-ray, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tcam-ray-installed
DEMO_DIR ?= runs/demo

# Keep every Ray connection on loopback (see README, "Ray on one machine").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install demo test clean-build

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Build tools and torch first: the compiled op builds against this torch.
	$(BIN)/python -m pip install --quiet setuptools wheel "pybind11>=2.12" torch torchvision
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tcam-ray demo --config configs/demo.yaml --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-build:
	rm -rf build tcam_ray/_C_*.so $(STAMP)
