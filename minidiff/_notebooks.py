"""Build and execute the chapter notebooks (``make notebooks``; also used by the tests).

The reviewed source of each notebook is ``notebooks/NN_slug.py`` (jupytext py:percent); the
``.ipynb`` beside it is derived from it and committed with its outputs. ``execute`` runs a
notebook in its own folder with a fresh kernel; ``python -m minidiff._notebooks --execute
notebooks/01_*.py`` rebuilds and re-executes in full mode (``MINIDIFF_FAST`` unset) unless
``--fast`` is given.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient


def read_source(py_path):
    """The notebook as jupytext reads it from its py:percent source."""
    return jupytext.read(py_path)


def cell_sources(nb):
    """``[(cell_type, source)]`` with surrounding whitespace stripped: what must agree between
    the ``.py`` and the ``.ipynb``."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def execute(nb, cwd, fast, timeout=600):
    """Run every cell of ``nb`` in a fresh python3 kernel; returns the notebook with outputs."""
    env = dict(os.environ)
    if fast:
        env["MINIDIFF_FAST"] = "1"
    else:
        env.pop("MINIDIFF_FAST", None)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}, env=env)
    # nbclient passes `env` on to the kernel manager through start_new_kernel's kwargs.
    client.start_new_kernel = _with_env(client.start_new_kernel, env)
    return client.execute()


def _with_env(start, env):
    def wrapped(**kwargs):
        kwargs.setdefault("env", env)
        return start(**kwargs)
    return wrapped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sources", nargs="+", help="notebooks/NN_slug.py files")
    parser.add_argument("--execute", action="store_true", help="run the cells, keep outputs")
    parser.add_argument("--fast", action="store_true", help="MINIDIFF_FAST=1")
    args = parser.parse_args(argv)
    for src in map(Path, args.sources):
        nb = read_source(src)
        t0 = time.perf_counter()
        if args.execute:
            nb = execute(nb, src.parent, args.fast)
        out = src.with_suffix(".ipynb")
        nbformat.write(nb, out)
        print(f"{out}: {len(nb.cells)} cells, {time.perf_counter() - t0:.0f} s, "
              f"{out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
