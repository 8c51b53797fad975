r"""Process-level tuning of the C allocator for CPU training.

PyTorch's CPU tensors come from ``malloc``.  With glibc's default settings a
large block (from 128 KiB up, the threshold then adapting to the sizes that
are freed) is handed out as fresh ``mmap`` pages and returned to the system
when freed, and free memory at the top of the heap is trimmed away.  A
training step that allocates and frees the same ``[U + I, d]`` and
``[B, I]`` temporaries every batch then takes a page fault for every 4 KiB
of them on every batch: about 3 µs a page on a virtual machine, which in a
DiffMM epoch on TikTok adds up to seconds (``mmdiff train`` on a 2-core VM:
millions of minor faults per epoch, four fifths of them gone with the
setting below).

:func:`retain_freed_memory` asks glibc to serve blocks up to
``mmap_threshold`` from the heap and to keep up to ``trim_threshold`` of
freed heap memory for reuse, so the temporaries of one batch are the
already mapped memory of the last.  Results do not change (only where the
memory comes from).  The price: freed memory stays with the process (up
to ``trim_threshold``) instead of going back to the system at once.

This is a setting of the whole process, so the library never makes it on
its own: ``mmdiff train`` and ``mmdiff demo`` (the application) call it
unless ``--system-allocator`` is given, and so do the benchmarks that time
them; a program that uses :class:`~mmdiff.train.Trainer` directly calls
it once at start-up if it wants it.  (Preloading jemalloc or tcmalloc has a
similar effect.)  Run the training loop in the process's main thread,
as ``mmdiff train`` does: a DiffMM epoch run from a helper thread was
measurably slower (``benchmarks/results/
diffmm_speed_helper_thread_2026-12-07.md``; cause not identified).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MiB = 2 ** 20
#: The largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit systems.
MAX_MMAP_THRESHOLD = 32 * MiB


def _libc() -> Optional[ctypes.CDLL]:
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None
    return libc if hasattr(libc, 'mallopt') else None


def retain_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD,
                        trim_threshold: int = 1024 * MiB,
                        top_pad: int = 64 * MiB) -> bool:
    r"""Makes glibc ``malloc`` keep freed memory for reuse (see the module
    docstring): blocks below ``mmap_threshold`` bytes come from the heap,
    up to ``trim_threshold`` bytes of free heap top are kept, and the heap
    grows ``top_pad`` bytes at a time.

    Returns :obj:`True` when the settings were applied, :obj:`False` where
    the C library is not glibc (macOS, Windows, musl) and nothing was
    changed.  Calling it again is harmless."""
    for name, v in (('mmap_threshold', mmap_threshold),
                    ('trim_threshold', trim_threshold),
                    ('top_pad', top_pad)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer of "
                             f"bytes, got {v!r}")
    if mmap_threshold > MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be at most "
                         f"{MAX_MMAP_THRESHOLD} bytes (glibc's limit), got "
                         f"{mmap_threshold}")
    libc = _libc()
    if libc is None:
        return False
    ok = True
    for param, value in ((M_MMAP_THRESHOLD, mmap_threshold),
                         (M_TRIM_THRESHOLD, trim_threshold),
                         (M_TOP_PAD, top_pad)):
        ok &= bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    return ok
