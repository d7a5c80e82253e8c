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
# mediapipe 0.10.21 (pose, selfie segmentation) in a venv of its own: it needs protobuf<5, the main
# stack's wandb >=5 (gvc_train/controls/mediapipe_client.py). Its python must be 3.9-3.12.
MP_VENV  ?= .venv-mediapipe
MP_STAMP := $(MP_VENV)/.gvc-installed

.PHONY: setup demo finetune-demo test bench bench-sizes samples control-samples text-encoder-tiny clean-runs lock-update readme-figures

setup: $(STAMP) $(MP_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing ffmpeg from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

# --no-deps: exactly the pinned list, which leaves out what mediapipe's unused tasks need (jax, ...)
$(MP_STAMP): requirements-mediapipe.txt
	@test -x $(MP_VENV)/bin/python || $(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/python -m pip install -q pip==26.3
	$(MP_VENV)/bin/python -m pip install -q --no-deps -r requirements-mediapipe.txt
	@touch $@

samples: setup
	$(MAKE) -C data samples PY=$(abspath $(PY))

# frame shards with controls for the controlled diffusion stage (data/Makefile control-samples)
control-samples: setup
	$(MAKE) -C data control-samples PY=$(abspath $(PY))

# the random frozen tiny text encoder recipes/tiny/controlled_cvg.yaml reads: a stand-in until a
# real one is given by path (gvc_train/models/controlled/tiny_text_encoder.py); deterministic
text-encoder-tiny: data/text_encoder_tiny/config.json

data/text_encoder_tiny/config.json: gvc_train/models/controlled/tiny_text_encoder.py | setup
	$(PY) -m gvc_train.models.controlled.tiny_text_encoder --out data/text_encoder_tiny

demo: samples
	$(PY) -m gvc_train.demo

# What a domain fine-tune buys: the reference latent codec and its tokenizer decoder fine-tuned on
# vtest.avi's frames 0-559, gvc eval of generic vs fine-tuned on frames 600-695 with x264/x265, the
# BD-rate printed and written to docs/results/vtest/ (gvc_train/finetune_demo.py).
finetune-demo: setup
	$(MAKE) -C data vtest-shards PY=$(abspath $(PY))
	$(PY) -m gvc_train.finetune_demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run

# Every exported codec's memory, plan and speed at 176x144, 640x272, 1280x720 and 1920x1080 under
# the default budget, beside x265 (benchmarks/bench_frame_sizes.py): the reference latent codec at
# 5 and 13 frames (does the peak grow with length?), the other codecs in checkpoints/ at 5. Long
# (the large sizes take tens of minutes a codec on one thread), so make bench runs 176x144 and
# 640x272 only. Writes bench_out/frame_sizes.json (make readme-figures copies it to docs/results/).
bench-sizes: setup
	$(PY) -m benchmarks.bench_frame_sizes --codec all --other-lengths 5 --out bench_out/frame_sizes.json

# The README's measured figures from bench_out/bench.json, the demo's summary, the reference
# codec's rd.json and the gvc eval report (benchmarks/readme_figures.py); commit what it changes.
readme-figures: setup
	$(PY) -m benchmarks.readme_figures

clean-runs:
	rm -rf runs wandb lightning_logs exports

# Move the pinned stack to the newest versions pyproject.toml allows: upgrade in .venv, rewrite
# constraints.txt from what got installed, then run `make test` before committing both.
lock-update: setup
	$(PY) -m pip install -q --upgrade -e '.[dev]'
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^#' | \
	  grep -viE '^(nvidia-|torch==|torchvision==|triton==)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	@echo "constraints.txt rewritten: run make test, then commit it"
