r"""Records the golden regression file: ``python -m tests.golden.record
[CASE ...]`` (default: every case; TikTok cases need ../shared/data)."""
from __future__ import annotations

import json
import sys
import warnings

from tests.golden.cases import CASES, GOLDEN, SHARED_DATA, TIKTOK, run_case


def main(argv=None) -> int:
    names = list(argv if argv else CASES)
    out = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for name in names:
        if name in TIKTOK and not (SHARED_DATA / 'tiktok').exists():
            print(f'skip {name}: no {SHARED_DATA / "tiktok"}')
            continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            out[name] = run_case(name)
        print(name, out[name]['metrics'].get('test/recall@20'), flush=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
