r"""The README's "Results so far" section agrees with the run records.

Every Recall/NDCG number of its table is recomputed from
``benchmarks/results/quality_runs/*.json`` with the functions of
``benchmarks/quality.py`` (the ones that build ``quality.md``), the seed count
in each row label must be the number of runs on record for that model and
dataset (all of them: the mean is over all of them), and the reference
column may only quote the papers' and the official code's numbers that
``quality.py`` holds.  Numbers in the section's prose must appear in a
results file that the same paragraph cites; ``quality.md`` and
``ablation.md`` are themselves checked to be what the run records give.
"""
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))

import quality  # noqa: E402

README = REPO / 'README.md'
HEADING = '### Results so far'
#: results files rebuilt from the run records by quality.py
GENERATED = {'quality.md': quality.render_quality,
             'ablation.md': quality.render_ablation}
#: numbers the prose check looks at: decimals, 1,234-style counts and
#: percentages (small integers such as "3 of 7 seeds" and section numbers
#: such as "§2.9" are not checked)
NUMBER = re.compile(r'(?<![\w.@§-])(\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+(?=\s?%))'
                    r'(?![\w])')


def results_section(text: str) -> str:
    assert HEADING in text, f'README.md has no "{HEADING}" section'
    body = text.split(HEADING, 1)[1]
    return re.split(r'\n#{1,3} ', body, maxsplit=1)[0]


def split_section(section: str) -> Tuple[List[str], List[str]]:
    r"""(the first table's lines, the other paragraphs)."""
    blocks = [b.strip() for b in re.split(r'\n\s*\n', section) if b.strip()]
    tables = [b for b in blocks if b.startswith('|')]
    assert tables, 'no table in the "Results so far" section'
    prose = [b for b in blocks[1:] if not b.startswith('|')]  # [0]: heading
    return tables[0].splitlines(), prose


def cells(line: str) -> List[str]:
    assert line.startswith('|') and line.endswith('|'), line
    return [c.strip() for c in line[1:-1].split('|')]


@pytest.fixture(scope='module')
def runs():
    records = quality.load_runs()
    assert records, f'no run records in {quality.RUNS}'
    return records


@pytest.fixture(scope='module')
def table():
    lines, _ = split_section(results_section(README.read_text()))
    return lines


def stated_seeds(label: str, filled) -> Dict[str, int]:
    r"""``{dataset: n}`` from ``'(7 seeds)'`` (for every dataset in
    ``filled``, the columns with numbers) or ``'(TikTok: 3 seeds; Baby,
    Sports: 1 seed)'`` in a row label."""
    by_word = {title.split()[0]: d for d, title in quality.README_COLUMNS}
    word = '|'.join(map(re.escape, by_word))
    out: Dict[str, int] = {}
    for m in re.finditer(rf'(?:((?:{word})(?:,\s*(?:{word}))*):\s*)?'
                         rf'(\d+)\s+seeds?\b', label):
        names = ([by_word[w.strip()] for w in m.group(1).split(',')]
                 if m.group(1) else list(filled))
        for d in names:
            assert d not in out, f'{label!r} states the seeds of {d} twice'
            out[d] = int(m.group(2))
    return out


def row_spec(label: str):
    r"""The entry of ``quality.README_ROWS`` that a row label names."""
    found = [spec for spec in quality.README_ROWS
             if label.startswith(f'{spec[0]} (')
             and label[len(spec[0]) + 2:].startswith(spec[1])]
    assert len(found) == 1, (f'row {label!r} matches {len(found)} entries '
                             f'of quality.README_ROWS')
    return found[0]


def test_table_header(table):
    assert cells(table[0]) == (['model'] +
                               [t for _, t in quality.README_COLUMNS] +
                               [quality.README_BEST_TEST, 'reference'])
    assert set(cells(table[1])) == {'---'}


def test_every_number_recomputed_from_the_run_records(table, runs):
    groups = quality.group_runs(runs)
    errors: List[str] = []
    seen = []
    for line in table[2:]:
        row = cells(line)
        label, values = row[0], row[1:1 + len(quality.README_COLUMNS)]
        best, reference = row[-2], row[-1]
        _, _, variants, _ = spec = row_spec(label)
        seen.append(spec)
        stated = stated_seeds(label, [d for d, _ in quality.README_COLUMNS
                                      if d in variants])
        if set(stated) != set(variants):
            errors.append(f'{label!r}: states seeds for {sorted(stated)}, '
                          f'has numbers for {sorted(variants)}')
        for (dataset, title), cell in zip(quality.README_COLUMNS, values):
            if dataset not in variants:
                if cell != '—':
                    errors.append(f'{label!r} / {title}: {cell!r}, but no '
                                  f'runs are assigned to it')
                continue
            model = variants[dataset]
            rs = groups.get((model, dataset, 0.0), [])
            if not rs:
                errors.append(f'{label!r} / {title}: no run records of '
                              f'{model} on {dataset}')
                continue
            s = quality.summarize(rs)
            want = f"{s['recall@20'][0]:.4f} / {s['ndcg@20'][0]:.4f}"
            if cell != want:
                errors.append(f'{label!r} / {title}: README {cell!r}, the '
                              f'{len(rs)} run records of {model} give '
                              f'{want!r}')
            n_seeds = len({r['seed'] for r in rs})
            assert n_seeds == len(rs) == s['seeds'], (model, dataset)
            if stated.get(dataset) != n_seeds:
                errors.append(f'{label!r} / {title}: the label states '
                              f'{stated.get(dataset)} seeds, '
                              f'{n_seeds} are on record for {model}')
        # the best-test-epoch column (TikTok)
        if 'tiktok' in variants:
            s = quality.summarize(groups[(variants['tiktok'], 'tiktok',
                                          0.0)])
            want = (f"{s['besttest_recall@20']:.4f} / "
                    f"{s['besttest_ndcg@20']:.4f}")
        else:
            want = '—'
        if best != want:
            errors.append(f'{label!r} / {quality.README_BEST_TEST}: README '
                          f'{best!r}, the run records give {want!r}')
        # the reference column quotes only known outside numbers
        allowed = set()
        for dataset, model in variants.items():
            for source in (quality.PAPER, quality.OFFICIAL_HERE):
                ref = source.get((model, dataset)) or ()
                allowed |= {f'{v:.4f}' for v in ref
                            if isinstance(v, float)}
        for number in re.findall(r'\d+\.\d+', reference):
            if number not in allowed:
                errors.append(f'{label!r} / reference: {number} is neither '
                              f'a paper number nor the official code\'s '
                              f'run in benchmarks/quality.py '
                              f'(PAPER, OFFICIAL_HERE)')
    missing = [spec[:2] for spec in quality.README_ROWS if spec not in seen]
    repeated = [spec[:2] for spec in seen if seen.count(spec) > 1]
    if missing or repeated:
        errors.append(f'rows missing: {missing}; repeated: {repeated}')
    assert not errors, '\n'.join(errors)


def test_table_is_the_one_quality_py_prints(table, runs):
    r"""``python benchmarks/quality.py --readme-table`` gives it verbatim
    (paste its output to update the README)."""
    assert table == quality.readme_table(runs)


def test_generated_results_files_are_up_to_date(runs):
    for name, render in GENERATED.items():
        text = render(runs)
        assert text == (quality.RESULTS / name).read_text(), (
            f'benchmarks/results/{name} is not what the run records give; '
            f'run python benchmarks/quality.py --report-only')


def test_prose_numbers_come_from_cited_results_files(runs):
    _, prose = split_section(results_section(README.read_text()))
    errors = []
    for para in prose:
        numbers = NUMBER.findall(para)
        cited = sorted(set(re.findall(r'`([\w.-]+\.(?:md|csv))`', para)))
        texts = []
        for name in cited:
            if name in GENERATED:
                texts.append(GENERATED[name](runs))
            elif (quality.RESULTS / name).is_file():
                texts.append((quality.RESULTS / name).read_text())
            else:
                errors.append(f'cites {name}, which is not in '
                              f'benchmarks/results/')
        if numbers and not texts:
            errors.append(f'quotes {numbers} without citing a results file: '
                          f'{para[:80]!r}...')
            continue
        text = '\n'.join(texts)
        for n in numbers:
            forms = {n, n.replace(',', '')}
            if not any(re.search(rf'(?<![\d.]){re.escape(f)}(?![\d])', text)
                       for f in forms):
                errors.append(f'{n} is not in {cited}: {para[:80]!r}...')
    assert not errors, '\n'.join(errors)


def test_parsers_on_examples():
    everywhere = [d for d, _ in quality.README_COLUMNS]
    assert stated_seeds('DiffMM (float32, 7 seeds)', ['tiktok']) == {
        'tiktok': 7}
    assert stated_seeds('LightGCN (TikTok: 3 seeds; Baby, Sports: 1 seed)',
                        everywhere) == {'tiktok': 3, 'baby': 1, 'sports': 1}
    assert stated_seeds('DiffRec (control; Baby preset lr 5e-5; 1 seed)',
                        ['baby', 'sports']) == {'baby': 1, 'sports': 1}
    assert stated_seeds('LightGCN (TikTok: 3 seeds)', everywhere) == {
        'tiktok': 3}
    assert stated_seeds('LightGCN', everywhere) == {}
    assert NUMBER.findall('0.1063, 13,449 users/s, −7.7 %, 106.6 % and '
                          'R@20 in 2026-12-02 over 3 seeds (§2.9)') == [
        '0.1063', '13,449', '7.7', '106.6']
