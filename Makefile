# Two entry points for a fresh machine: `make train` and `make test`.
# Each creates .venv and installs vggnet into it (torch and torchvision by the ranges of
# pyproject.toml): `make train` the package alone, `make test` with its test extras too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

.PHONY: install train test summary
install: $(VENV)/.installed

train: $(VENV)/.installed   ## VGG-16-BN on CIFAR-10 with the fast recipe (data: $$VGGNET_DATA or ../shared/data)
	$(BIN)/vggnet train $(ARGS)

test: $(VENV)/.installed-test    ## the whole test suite, no network
	$(BIN)/python -m pytest -q $(ARGS)

summary: $(VENV)/.installed
	$(BIN)/vggnet summary --config D
