PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := $(VENV)/.installed-extras

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# the heavy optional extras (NNCF for int8 export, Ray Data), for the tests only
$(EXTRAS): $(STAMP)
	$(BIN)/pip install -q -e '.[test,int8,ray]'
	touch $(EXTRAS)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fcosdet demo

# test_int8 runs in a process of its own: after its OpenVINO int8 work, a later test of the same
# process crashed in CPython (a segfault in a type lookup; see the note in tests/test_int8.py)
test: $(EXTRAS)
	$(BIN)/python -m pytest -q tests --ignore=tests/test_int8.py
	$(BIN)/python -m pytest -q tests/test_int8.py

bench: $(STAMP)
	$(BIN)/python benchmarks/assign_targets.py

clean:
	rm -rf $(VENV) runs build *.egg-info
