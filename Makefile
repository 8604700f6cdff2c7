# The README's two commands. Both create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: demo test clean bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(TSTAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(STAMP)

# These machines set PYTHONDONTWRITEBYTECODE=1, so an editable install would compile bbx's
# modules again on every run of `bbx`; compile them once (only changed files are redone).
bytecode: $(BIN)/python
	$(BIN)/python -m compileall -q bbx

demo: $(STAMP) bytecode
	$(BIN)/python -m bbx.demo

test: $(TSTAMP) bytecode
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo
