# Two entry points for a fresh machine: `make train` and `make test`.
# Each creates .venv, installs vggnet into it (torch and torchvision by the ranges of
# pyproject.toml) and runs the job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/vggnet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

.PHONY: install train test summary
install: $(BIN)/vggnet

train: $(BIN)/vggnet   ## VGG-16-BN on CIFAR-10 with the fast recipe (data: $$VGGNET_DATA or ../shared/data)
	$(BIN)/vggnet train $(ARGS)

test: $(BIN)/vggnet    ## the whole test suite, no network
	$(BIN)/python -m pytest -q $(ARGS)

summary: $(BIN)/vggnet
	$(BIN)/vggnet summary --config D
