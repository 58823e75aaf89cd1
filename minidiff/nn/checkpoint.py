"""Safe checkpoints: a pytree of arrays plus JSON metadata in one ``.npz``.

- **Atomic**: written to a temporary file in the target folder, flushed to disk, then renamed over
  the target (``os.replace``), so a crash mid-save leaves the previous checkpoint intact.
- **No pickle**: read with ``allow_pickle=False``; object arrays are refused on save and on load.
- **Checked**: the header stores a SHA-256 over every array's name, dtype, shape and bytes; a
  truncated, damaged or edited file gives a ``ValueError`` naming the file and the problem.

Layout inside the ``.npz``: ``__header__`` (a JSON string: format, version, tree structure,
metadata, digest) and one entry ``tree/<path>`` per leaf (paths from ``tree_flatten``).
"""

import glob
import hashlib
import json
import os
import pathlib
import tempfile
import zipfile

import numpy as onp

from .tree import tree_flatten, tree_structure, tree_unflatten

FORMAT, VERSION = "minidiff-checkpoint", 1


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = onp.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path, tree, **meta):
    """Write ``tree`` (a pytree of arrays) and JSON-able ``meta`` to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {f"tree/{k}": onp.asarray(v) for k, v in tree_flatten(tree).items()}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise ValueError(f"cannot save `{name}`: object arrays would need pickle")
    header = {"format": FORMAT, "version": VERSION, "structure": tree_structure(tree),
              "meta": meta, "sha256": _digest(arrays)}
    try:
        header_json = json.dumps(header)
    except TypeError as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from None
    atomic_write(path, lambda f: onp.savez(f, __header__=onp.array(header_json), **arrays))


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file in ``path``'s folder, flush it to disk, then
    rename it over ``path``: readers see the old file or the new one, never a partial one."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def stale_temporaries(path):
    """The temporary files ``atomic_write`` left beside ``path`` when a save was killed
    (``kill -9`` leaves no chance to clean up): a run deletes its own when it starts."""
    folder, name = os.path.split(os.path.abspath(path))
    return sorted(pathlib.Path(folder).glob(f".{glob.escape(name)}.*.tmp"))


def load(path):
    """Read a checkpoint written by ``save``; returns ``(tree, meta)``.

    Raises ``ValueError`` for a file that is not a minidiff checkpoint, is truncated or damaged,
    holds pickled objects, or whose arrays do not match the digest recorded when it was saved.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise ValueError(f"{path!s} is not a minidiff checkpoint: not an .npz (zip) archive")
    try:
        # Open the file ourselves: np.load leaks its handle when the zip is unreadable.
        with open(path, "rb") as fh, onp.load(fh, allow_pickle=False) as z:
            names = list(z.files)
            header = json.loads(str(z["__header__"])) if "__header__" in names else {}
            arrays = {n: z[n] for n in names if n != "__header__"}
    except (zipfile.BadZipFile, EOFError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path!r} is truncated or damaged: {err}") from None
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(f"checkpoint {path!r} holds pickled objects, which minidiff "
                             "never writes and refuses to load") from None
        raise ValueError(f"checkpoint {path!r} cannot be read: {err}") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"{path!r} is not a minidiff checkpoint of version {VERSION} "
                         f"(format={header.get('format')!r}, version={header.get('version')!r})")
    if _digest(arrays) != header.get("sha256"):
        raise ValueError(f"checkpoint {path!r} was altered or damaged: its arrays do not match "
                         "the SHA-256 recorded when it was saved")
    flat = {name[len("tree/"):]: a for name, a in arrays.items()}
    try:
        tree = tree_unflatten(header["structure"], flat)
    except KeyError as err:
        raise ValueError(f"checkpoint {path!r} is missing the array {err}") from None
    return tree, header["meta"]


def load_kind(path, kind, what, command):
    """``load`` a model file whose ``meta["model"]`` must be ``kind``: any other file is refused
    by name (its parameters would not fit), saying ``what`` was expected and which ``command``
    (after ``python -m minidiff``) writes one. Returns ``(tree, meta)``."""
    tree, meta = load(path)
    if meta.get("model") != kind:
        raise ValueError(f"{path!s} holds a model of kind {meta.get('model')!r}, not {what} "
                         f"(`python -m minidiff {command}` writes one)")
    return tree, meta
