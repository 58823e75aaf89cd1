# minidiff: the two commands a learner needs are `make demo` and `make test`.
# Both create .venv on first use and install the project into it; nothing else is assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
NOTEBOOKS := $(wildcard notebooks/[0-9][0-9]_*.py)

.PHONY: demo test test-slow notebooks lab lint bench bench-quality mutations student grade course-check clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "minidiff needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## demo: train and sample the chapters' models; figures go to out/, measurements to the terminal
demo: $(STAMP)
	$(BIN)/python -m minidiff demo --out out

## test: unit tests, then every notebook executed in fast mode (MINIDIFF_FAST=1)
# pytest exits 5 when it collects no test; that is reported, not treated as a crash.
test: $(STAMP)
	MINIDIFF_FAST=1 $(BIN)/python -m pytest -m "not slow" -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

## test-slow: the long checks (full training runs against the shipped numbers)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

## notebooks: execute every notebook in full mode and write its outputs into the .ipynb
notebooks: $(STAMP)
	$(BIN)/python -m minidiff.tools.notebooks --execute $(NOTEBOOKS)

## lab: open the notebooks in JupyterLab
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,lab]'
	$(BIN)/jupyter lab notebooks/

## bench: time a U-Net training step (ratios within one run; PyTorch if installed in .venv)
bench: $(STAMP)
	$(BIN)/python -m minidiff.tools.bench

## bench-quality: train MODEL (unet or dit) for 15 minutes, sample the full protocol, score it on
## the validation and the test digits (about half an hour on 2 cores); out/quality/report.json
MODEL ?= unet
bench-quality: $(STAMP)
	$(BIN)/python -m minidiff.tools.bench quality --model $(MODEL) --minutes 15 --out out/quality/$(MODEL)

## mutations: one-line changes to the maths that the unit tests must catch; prints survivors
mutations: $(STAMP)
	$(BIN)/python -m minidiff.tools.mutations

## student: a student copy in student/ with chapter CH's exercises blanked (CH=all for all)
CH ?= all
student: $(STAMP)
	$(BIN)/python -m minidiff.tools.course build --chapters $(CH) --out student

## grade: chapter CH's tests in the student copy, one line per exercise (hidden tests added)
grade: $(STAMP)
	$(BIN)/python -m minidiff.tools.course grade student --chapter $(CH) --hidden tests/instructor

## course-check: every chapter's exercises fail when blank and pass when solved
course-check: $(STAMP)
	$(BIN)/python -m minidiff.tools.course check

## lint: ruff over the package, the tests and the notebooks' sources
lint: $(STAMP)
	$(BIN)/ruff check minidiff tests notebooks/*.py data/make_mnist.py

clean:
	rm -rf out student .pytest_cache .hypothesis .ruff_cache
