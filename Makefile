# Set-up, demo and tests. `make demo` and `make test` each create .venv and install the package when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Train the default tagger (cross-attention fusion) on the committed sample, then print its test metrics.
demo: install
	$(BIN)/multimodal fit --config configs/tagging/cross_attention.yaml
	$(BIN)/multimodal test --config configs/tagging/cross_attention.yaml \
		--ckpt_path "$$(ls -t runs/tagging/tagger/version_*/checkpoints/last.ckpt | head -n 1)"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check multimodal encoders fusion benchmarks tests

clean:
	rm -rf runs lightning_logs .pytest_cache
