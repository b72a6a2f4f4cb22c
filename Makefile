# Set-up, demo and tests. `make demo` and `make test` each create .venv and install the package when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo serve-demo test test-fast lint clean browser

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

# Train the three tasks on the committed sample (once; kept under runs/serve-demo), build the search index, serve.
DEMO := runs/serve-demo
newest = "$$(ls -t $(1)/version_*/checkpoints/last.ckpt | head -n 1)"

serve-demo: install $(DEMO)/tagger.ckpt $(DEMO)/captioner.ckpt $(DEMO)/index/lexical
	$(BIN)/multimodal serve --tagger $(DEMO)/tagger.ckpt --captioner $(DEMO)/captioner.ckpt --index $(DEMO)/index \
		--port 8000 --max_batch_size 32 --batch_timeout 0.01 --workers 1

$(DEMO)/tagger.ckpt:
	$(BIN)/multimodal fit --config configs/tagging/cross_attention.yaml
	mkdir -p $(DEMO) && cp $(call newest,runs/tagging/tagger) $@

$(DEMO)/captioner.ckpt:
	$(BIN)/multimodal fit --config configs/captioning/cross_attention.yaml
	mkdir -p $(DEMO) && cp $(call newest,runs/captioning/captioner) $@

$(DEMO)/retriever.ckpt:
	$(BIN)/multimodal fit --config configs/retrieval/dual_encoder.yaml
	mkdir -p $(DEMO) && cp $(call newest,runs/retrieval/dual_encoder) $@

# The export keeps every manifest column (the page's filters) and the index adds BM25 over the titles (its lexical
# and hybrid modes). The target is the BM25 folder, so an older demo index without one is built again; its export
# is rebuilt with it (an export of another version's columns is refused, not reused).
$(DEMO)/index/lexical: $(DEMO)/retriever.ckpt
	rm -rf $(DEMO)/export
	$(BIN)/multimodal export --ckpt_path $< --input examples/fashion-products/metadata.csv \
		--image_root examples/fashion-products/images --out $(DEMO)/export
	$(BIN)/multimodal index $(DEMO)/export --out $(DEMO)/index --lexical title

# Headless Chromium for the search page's browser test (Debian packages; skipped where apt is not usable).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	    echo "chromium not installed: the browser test will be skipped"; }

# Two workers (pytest-xdist), each test file in one worker: the tests run one torch thread each, so the two cores
# are both used (7 minutes instead of 13 on a 2-core machine).
test: install browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check multimodal encoders fusion benchmarks tests

clean:
	rm -rf runs lightning_logs .pytest_cache
