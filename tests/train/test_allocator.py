r"""``mmdiff.train.allocator``: glibc malloc keeps freed memory for reuse,
so re-allocating the temporaries of a training step does not page-fault
again; the CLI applies it unless ``--system-allocator``."""
import platform
import subprocess
import sys
import textwrap

import pytest

from mmdiff.train.allocator import MAX_MMAP_THRESHOLD, retain_freed_memory

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'

#: prints the bytes glibc maps afresh (``mallinfo2().hblkhd``) for one new
#: 28 MB tensor, then the minor page faults of one round of allocating and
#: freeing four of them (mean of 20 rounds after three warm-up rounds)
PROBE = textwrap.dedent(r'''
    import ctypes, resource, sys, torch
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
            'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
    libc = ctypes.CDLL('libc.so.6')
    libc.mallinfo2.restype = Info
    if sys.argv[1] == 'retain':
        from mmdiff.train.allocator import retain_freed_memory
        assert retain_freed_memory() is True
        assert retain_freed_memory() is True      # repeating is harmless
    n = 7 * 2 ** 20
    before = libc.mallinfo2().hblkhd
    x = torch.empty(n)
    mapped = libc.mallinfo2().hblkhd - before
    del x
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        ts = [torch.ones(n) for _ in range(4)]
        del ts
    f0 = faults()
    for _ in range(20):
        ts = [torch.ones(n) for _ in range(4)]
        del ts
    print(mapped, (faults() - f0) / 20)
''')


def _probe(mode: str):
    out = subprocess.run([sys.executable, '-c', PROBE, mode], check=True,
                         capture_output=True, text=True).stdout
    mapped, faults = out.strip().splitlines()[-1].split()
    return int(mapped), float(faults)


@pytest.mark.skipif(not GLIBC, reason='glibc only')
def test_retained_memory_is_reused_not_mapped_afresh():
    size = 7 * 2 ** 20 * 4
    pages = 4 * size / 4096                   # 28,672 pages per round
    # glibc's defaults map a new 28 MB block with fresh pages (which fault
    # in on first touch and are unmapped again when it is freed) ...
    mapped, _ = _probe('system')
    assert mapped >= size
    # ... retained, it comes from the heap, and freed blocks are reused
    mapped, faults = _probe('retain')
    assert mapped == 0
    assert faults < 0.02 * pages, faults


def test_arguments_are_checked():
    for bad in (-1, 1.5, True, '1'):
        with pytest.raises(ValueError, match='non-negative integer'):
            retain_freed_memory(trim_threshold=bad)
    with pytest.raises(ValueError, match="glibc's limit"):
        retain_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)


def test_cli_applies_it_unless_asked_not_to(monkeypatch):
    from mmdiff import cli
    calls = []
    monkeypatch.setattr('mmdiff.train.allocator.retain_freed_memory',
                        lambda: calls.append(1) or True)
    p = cli.build_parser()
    cli._set_allocator(p.parse_args(['train']))
    assert calls == [1]
    cli._set_allocator(p.parse_args(['train', '--system-allocator']))
    cli._set_allocator(p.parse_args(['demo', '--system-allocator']))
    assert calls == [1]
    cli._set_allocator(p.parse_args(['demo']))
    assert calls == [1, 1]
