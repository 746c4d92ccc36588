"""Keep freed activation memory in the process instead of handing it back to the OS.

PyTorch on CPU allocates every activation with malloc. glibc serves blocks above its mmap
threshold with fresh mmaps and trims the heap top after each free, so every UNet step re-faults
the same memory page by page; raising the thresholds keeps the pages (the measured effect is in
docs/development.md, "Memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum: larger blocks are still mmapped
TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap for the next step


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied (glibc Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
