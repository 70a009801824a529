# Set-up and the project's jobs. `make demo` and `make test` create .venv and install what they need
# (and espeak-ng from Debian's packages, which the demo's corpus and its smoke test speak with).
#
#   TORCH=torch==2.13.0   the CPU build that lies on these machines' disk; on a GPU machine run
#                         `make TORCH= install` inside an environment that already has CUDA torch.
#   FAIRSEQ=ve-fairseq==0.12.3   see README.md ("Which fairseq") for why this distribution.
#   PYTHON=python3        must be Python 3.11 (checked before the environment is created).
#   TEST_WORKERS=2        pytest processes of make test (pytest-xdist's -n; 0: the tests run in pytest's own process).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
FAIRSEQ ?= ve-fairseq==0.12.3
BIN := $(VENV)/bin

.PHONY: install espeak compiler testdata test demo clean

# ve-fairseq==0.12.3 is a cp311 wheel only (setup.py's python_requires says the same): refuse any
# other Python before creating the environment.
$(BIN)/python:
	@version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])') && [ "$$version" = 3.11 ] \
		|| { echo "sew_plugin needs Python 3.11 (FAIRSEQ=$(FAIRSEQ) is built for it alone); PYTHON=$(PYTHON) is" \
			"Python '$$version': run make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py
	$(if $(TORCH),$(BIN)/pip install $(TORCH))
	$(BIN)/pip install --no-deps $(FAIRSEQ)
	$(BIN)/pip install -e '.[test,demo]'
	touch $@

install: $(VENV)/.installed

# The demo's speech synthesiser, from Debian's packages (sudo when not root).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
espeak:
	@command -v espeak-ng >/dev/null || $(SUDO) apt-get install -y espeak-ng \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y espeak-ng)

# A C compiler for SEW-D's position bias kernel (sew_plugin/modules/position_bias.c, compiled on
# first use; without one SEW-D gathers with PyTorch, more slowly, and its kernel's tests fail).
compiler:
	@command -v $${CC:-cc} >/dev/null || $(SUDO) apt-get install -y gcc \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y gcc)

# Real speech for sew transcribe's tests: the LibriVox recordings of Debian's pocketsphinx-testdata
# (16 kHz WAV, with their transcription), fetched with apt-get download (no root needed).
LIBRIVOX := tests/data/librivox
testdata: $(LIBRIVOX)/transcription
$(LIBRIVOX)/transcription:
	rm -rf tests/data/.deb && mkdir -p tests/data/.deb $(LIBRIVOX)
	cd tests/data/.deb && apt-get download pocketsphinx-testdata \
		|| ($(SUDO) apt-get update && apt-get download pocketsphinx-testdata)
	dpkg-deb -x tests/data/.deb/pocketsphinx-testdata_*.deb tests/data/.deb/root
	cp tests/data/.deb/root/usr/share/pocketsphinx/test/data/librivox/* $(LIBRIVOX)/
	rm -rf tests/data/.deb

# lint-imports checks the package's layering contract (.importlinter; README: Layout) before the tests.
# TEST_WORKERS pytest processes (pytest-xdist) share the tests out file by file, so each file's
# module fixtures (fine-tuned models, the demo's smoke run) are built once.
TEST_WORKERS ?= 2
test: install espeak compiler testdata
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The end-to-end recipe (examples/demo/run.py); reruns resume from the finished steps.
DEMO_OUT ?= demo_out
demo: install espeak compiler
	$(BIN)/python examples/demo/run.py --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) build *.egg-info
