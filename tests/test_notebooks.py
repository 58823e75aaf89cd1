"""Every chapter notebook: paired with its source, small, and executing in fast mode.

The ``.py`` (jupytext py:percent) is the reviewed source; the committed ``.ipynb`` must hold the
same cells (checked cell by cell, not by file time), stay under about 500 KB with outputs, and the
notebook must run top to bottom with ``MINIDIFF_FAST=1`` (its own closing asserts included).
"""

from pathlib import Path

import nbformat
import pytest

from minidiff.tools import notebooks as _notebooks

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.py found"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_is_paired_with_its_source(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make notebooks`"
    committed = nbformat.read(ipynb, as_version=4)
    assert _notebooks.cell_sources(committed) == _notebooks.cell_sources(
        _notebooks.read_source(source)), f"{ipynb.name} differs from {source.name}: re-run it"
    assert ipynb.stat().st_size < 600_000, f"{ipynb.name} is over 600 KB: shrink its figures"
    # The committed outputs come from a full run with no errors.
    for cell in committed.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{ipynb.name} was committed with an error"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_fast_mode(source):
    _notebooks.execute(_notebooks.read_source(source), source.parent, fast=True)
