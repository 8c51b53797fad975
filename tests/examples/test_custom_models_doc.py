r"""The python code blocks of docs/custom_models.md execute in order."""
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_custom_models_doc_blocks_run(tmp_path, monkeypatch):
    from mmdiff.nn.models import MODELS
    text = (ROOT / 'docs' / 'custom_models.md').read_text()
    blocks = re.findall(r'```python\n(.*?)```', text, re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    scope = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            for block in blocks:
                exec(compile(block, 'docs/custom_models.md', 'exec'), scope)
        assert MODELS['featuremf'] is scope['FeatureMF']
    finally:
        MODELS.pop('featuremf', None)
