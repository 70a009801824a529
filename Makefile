# Set-up and the project's jobs. `make test` and `make demo` create .venv and install what they need.
#
#   TORCH=torch==2.13.0   the CPU build that lies on these machines' disk; on a GPU machine run
#                         `make TORCH= install` inside an environment that already has CUDA torch.
#   FAIRSEQ=ve-fairseq==0.12.3   see README.md ("Which fairseq") for why this distribution.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
FAIRSEQ ?= ve-fairseq==0.12.3
BIN := $(VENV)/bin

.PHONY: install test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py
	$(if $(TORCH),$(BIN)/pip install $(TORCH))
	$(BIN)/pip install --no-deps $(FAIRSEQ)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
