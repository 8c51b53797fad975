r"""Sphinx configuration of the mmdiff documentation.

Build locally (from the repository root)::

    .venv/bin/python -m sphinx -W --keep-going -n -b html docs build/docs

``tests/test_docs_build.py`` runs the same build and fails on any warning.
The build needs no network: there is no intersphinx, so references to
torch, PyG, NumPy, SciPy and pandas are listed as known external names
(``nitpick_ignore_regex``) while every reference into :mod:`mmdiff` must
resolve.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'docs' / '_ext'))
os.environ.setdefault('OMP_NUM_THREADS', '1')

import mmdiff  # noqa: E402

project = 'mmdiff'
author = 'mmdiff contributors'
copyright = 'mmdiff contributors'  # noqa: A001
version = release = mmdiff.__version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'myst_parser',
    'mmdiff_sphinx',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', '_ext', 'Thumbs.db', '.DS_Store']
# quotes and ellipses only: ``--epochs`` in prose must not become an en dash
smartquotes_action = 'qe'
templates_path: list = []

# -- autodoc / napoleon ------------------------------------------------------
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_class_signature = 'mixed'
autodoc_inherit_docstrings = False
autodoc_default_options = {'show-inheritance': True,
                           'undoc-members': True}
autodoc_mock_imports: list = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
add_module_names = False
python_use_unqualified_type_names = True

# -- MyST (the Markdown pages: guide, algorithms, hyper-parameters) ----------
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_heading_anchors = 4
myst_dmath_double_inline = True

# -- nitpicky: every cross-reference must resolve ----------------------------
nitpicky = True
# No intersphinx (the build runs offline): names from these packages are
# external and cannot be resolved; any unresolved mmdiff name still fails.
_EXTERNAL = (r'(torch|torch_geometric|torch_sparse|torch_scatter|numpy|np|'
             r'scipy|pandas|pd|pathlib|os|argparse|typing|collections|'
             r'enum|dataclasses|pickle|io)(\..*)?')
nitpick_ignore_regex = [
    (r'py:.*', _EXTERNAL),
    # external classes that docstrings and type hints name unqualified
    (r'py:.*', r'(Tensor|HeteroData|EdgeIndex|SparseTensor|ndarray|'
               r'DataFrame|Series|spmatrix|csr_matrix|coo_matrix|Path|'
               r'Module|Parameter|Generator|device|dtype)(\..*)?'),
]


# Words of napoleon's type fields ("int, optional", "callable") and the
# constants PyG-style docstrings mark as :obj:.
nitpick_ignore = [('py:class', w) for w in (
    'optional', 'callable', 'sequence', 'sparse', 'default')] + \
    [('py:obj', w) for w in ('True', 'False', 'None')]


# References by defining module, the docstrings of re-exported constants,
# the CLI help, the script listings, the results table and the links of
# "docs/algorithms.md §N" citations: docs/_ext/mmdiff_sphinx.py.


# -- HTML ---------------------------------------------------------------------
html_theme = 'furo'
html_title = f'mmdiff {release}'
html_static_path: list = []
html_show_sourcelink = False
