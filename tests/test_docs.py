r"""The documentation travels with the package and its examples run:
the code blocks of docs/extending.md execute in order, and nothing in the
package, its docs or its configs points outside the repository."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_extending_examples_run(one_thread):
    text = (ROOT / 'docs' / 'extending.md').read_text()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    assert len(blocks) >= 4
    scope: dict = {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        for block in blocks:
            exec(compile(block, 'docs/extending.md', 'exec'), scope)
    assert scope['result'].epochs_run == 2


def test_nothing_points_outside_the_repository():
    files = [p for p in (ROOT / 'mmdiff').rglob('*')
             if p.suffix in ('.py', '.toml')] + \
        list((ROOT / 'docs').glob('*.md'))
    bad = []
    for p in files:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r'ALGORITHMS\.md|PEERS\.md|ANCHORS\.md|DESIGN\.md|'
                         r'\.\./shared|shared/data', line) and \
                    'docs/algorithms.md' not in line.replace(
                        'ALGORITHMS', 'algorithms'):
                bad.append(f'{p.relative_to(ROOT)}:{n}: {line.strip()}')
    assert not bad, '\n'.join(bad)


def test_cited_sections_exist():
    doc = (ROOT / 'docs' / 'algorithms.md').read_text()
    heads = set(re.findall(r'^#+ (§[\d.]+|D\d+)\b', doc, flags=re.M))
    cited = set()
    for p in (ROOT / 'mmdiff').rglob('*.py'):
        for m in re.finditer(r'docs/algorithms\.md[^\n]*?((?:§[\d.]*\d|'
                             r'D\d+))', p.read_text()):
            cited.add(m.group(1))
    missing = sorted(c for c in cited if c not in heads)
    assert not missing, missing
