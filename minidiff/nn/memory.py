"""A process-wide allocator setting for the image chapters' training and sampling entry points.

glibc's ``malloc`` serves large blocks (the im2col matrices and activations of a U-Net step, tens
of MB each) with fresh ``mmap`` calls and returns them to the kernel on ``free``. Every step then
pays the page faults of touching new memory again: on the 2-core machines minidiff is built on,
filling a fresh 58 MB array took 0.5 s, against 0.01 s for memory malloc had kept. Two ``mallopt``
settings keep freed memory in the process instead:

- ``M_MMAP_MAX = 0``: never use ``mmap`` for large blocks (use the heap);
- ``M_TRIM_THRESHOLD = -1``: never give the top of the heap back to the kernel.

This changes how the *whole process* allocates, so it is not done on ``import minidiff``: the
entry points that train or sample images call ``keep_freed_memory()`` (the command line, the
benchmark, the chapter 6 notebook, the test-suite's conftest). Elsewhere (Windows, macOS, musl)
it does nothing and says so.
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
_done = False


def keep_freed_memory():
    """Apply the two ``mallopt`` settings once; returns True if glibc accepted them."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):
        ok = False
    _done = ok
    return ok
