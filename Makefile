# gvc_train: `make demo` runs the main job on the embedded sample data, `make test` the tests.
# Both set up what they need on a fresh machine first (.venv, the package, ffmpeg).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# torch first, pinned: on this machine these wheels lie on disk (a looser range downloads GBs).
# On a GPU machine: make setup TORCH_SPEC="torch torchvision --index-url <your CUDA index>".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.gvc-installed

.PHONY: setup demo test bench samples clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing ffmpeg from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

samples: setup
	$(MAKE) -C data samples PY=$(abspath $(PY))

demo: samples
	$(PY) -m gvc_train.demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run

clean-runs:
	rm -rf runs wandb lightning_logs exports
