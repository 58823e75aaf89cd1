"""Build and execute the chapter notebooks (``make notebooks``; also used by the tests).

The reviewed source of each notebook is ``notebooks/NN_slug.py`` (jupytext py:percent); the
``.ipynb`` beside it is derived from it and committed with its outputs. ``execute`` runs a
notebook in its own folder with a fresh kernel; ``python -m minidiff.tools.notebooks --execute
notebooks/01_*.py`` rebuilds and re-executes in full mode (``MINIDIFF_FAST`` unset) unless
``--fast`` is given.
"""

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

from minidiff.nn.parallel import temporary_environ


def read_source(py_path):
    """The notebook as jupytext reads it from its py:percent source."""
    return jupytext.read(py_path)


def cell_sources(nb):
    """``[(cell_type, source)]`` with surrounding whitespace stripped: what must agree between
    the ``.py`` and the ``.ipynb``."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def execute(nb, cwd, fast, timeout=600):
    """Run every cell of ``nb`` in a fresh python3 kernel; returns the notebook with outputs.

    The kernel inherits this process's environment at launch, so ``MINIDIFF_FAST`` is set (or
    removed) around the run and restored afterwards.
    """
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "MINIDIFF_FAST": "1" if fast else None}
    with temporary_environ(env):
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}})
        return client.execute()


def sync_sources(nb, committed):
    """``committed`` (an executed ``.ipynb``) with each cell's source replaced by ``nb``'s, the
    outputs kept. Only for edits that cannot change an output (a renamed import, a comment, a
    module moved); anything else is re-executed. Refuses notebooks whose cells do not line up."""
    if [c.cell_type for c in nb.cells] != [c.cell_type for c in committed.cells]:
        raise ValueError("the cells do not line up (added, removed or re-typed): re-execute it")
    for new, old in zip(nb.cells, committed.cells, strict=True):
        old.source = new.source
    return committed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sources", nargs="+", help="notebooks/NN_slug.py files")
    parser.add_argument("--execute", action="store_true", help="run the cells, keep outputs")
    parser.add_argument("--fast", action="store_true", help="MINIDIFF_FAST=1")
    parser.add_argument("--sync-sources", action="store_true",
                        help="copy the sources into the committed .ipynb, keeping its outputs "
                             "(for edits that change no output)")
    args = parser.parse_args(argv)
    for src in map(Path, args.sources):
        nb = read_source(src)
        t0 = time.perf_counter()
        out = src.with_suffix(".ipynb")
        if args.sync_sources:
            nb = sync_sources(nb, nbformat.read(out, as_version=4))
        elif args.execute:
            nb = execute(nb, src.parent, args.fast)
        nbformat.write(nb, out)
        print(f"{out}: {len(nb.cells)} cells, {time.perf_counter() - t0:.0f} s, "
              f"{out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
