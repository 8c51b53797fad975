r"""The documentation's own Sphinx extension.

Directives that keep the user guide in step with the code:

* ``.. mmdiff-cli-help:: [subcommand ...]`` — the ``--help`` text of the
  command line, read from :func:`mmdiff.cli.build_parser` at build time.
* ``.. mmdiff-scripts:: folder`` — one section per ``folder/*.py`` (the
  benchmark scripts, the examples): its module docstring (with ``:summary:``
  its first paragraph), parsed as reST, and with ``:code:`` its source.
* ``.. mmdiff-results-table::`` — the README's results table, rebuilt from the
  stored benchmark runs by ``benchmarks/quality.py``.

References: a docstring may name an object where it is defined
(``mmdiff.nn.models.base.Recommender``) or relative to its own module, while
the API reference documents each object once, under its public name; such a
reference is resolved by object identity.  A constant re-exported by a package
gets the ``#:`` comment of the module that defines it.

The docstrings cite the algorithms page as plain text, ``docs/algorithms.md
§2.6`` or ``docs/algorithms.md D5``; every such citation becomes a link to
that section (a citation of a section that does not exist is a warning).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from typing import List

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docstrings import prepare_docstring
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)


class CliHelp(SphinxDirective):
    r"""The help text of ``mmdiff`` or of one of its subcommands."""
    optional_arguments = 2
    has_content = False

    def run(self) -> List[nodes.Node]:
        from mmdiff.cli import build_parser
        old = os.environ.get('COLUMNS')
        os.environ['COLUMNS'] = '88'  # argparse wraps to the terminal width
        try:
            parser = build_parser()
            for name in self.arguments:
                sub = next(a for a in parser._actions
                           if a.__class__.__name__ == '_SubParsersAction')
                parser = sub.choices[name]
            text = parser.format_help()
        finally:
            if old is None:
                del os.environ['COLUMNS']
            else:
                os.environ['COLUMNS'] = old
        block = nodes.literal_block(text, text)
        block['language'] = 'text'
        return [block]


def _docstring(path: Path) -> str:
    try:
        return ast.get_docstring(ast.parse(path.read_text())) or ''
    except SyntaxError:
        return ''


class Scripts(SphinxDirective):
    r"""A section per script of a folder of the repository."""
    required_arguments = 1
    option_spec = {'code': directives.flag, 'summary': directives.flag,
                   'empty': directives.unchanged}

    def run(self) -> List[nodes.Node]:
        folder = ROOT / self.arguments[0]
        scripts = sorted(p for p in folder.glob('*.py')
                         if not p.name.startswith('_')) \
            if folder.is_dir() else []
        if folder.is_dir():
            self.env.note_dependency(str(folder))
        lines: List[str] = []
        if not scripts:
            lines += [self.options.get('empty') or
                      f'There is nothing in ``{self.arguments[0]}/`` yet.', '']
        for path in scripts:
            self.env.note_dependency(str(path))
            rel = path.relative_to(ROOT).as_posix()
            title = f'``{rel}``'
            lines += [title, '~' * (len(title) + 4), '']
            doc = _docstring(path)
            if 'summary' in self.options:
                doc = doc.split('\n\n', 1)[0]
            lines += doc.splitlines() + ['']
            if 'code' in self.options:
                lines += [f'.. literalinclude:: /../{rel}',
                          '   :language: python', '']
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, str(folder)),
                                 node)
        return node.children


class ResultsTable(SphinxDirective):
    r"""The README's results table, from ``benchmarks/quality.py``."""
    has_content = False

    def run(self) -> List[nodes.Node]:
        path = ROOT / 'benchmarks' / 'quality.py'
        spec = importlib.util.spec_from_file_location('_mmdiff_quality', path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault('_mmdiff_quality', module)
        spec.loader.exec_module(module)
        rows = [r for r in module.readme_table(module.load_runs())
                if r.startswith('|') and not re.match(r'\|[-| ]+\|$', r)]
        cells = [[c.strip() for c in r.strip('|').split('|')] for r in rows]
        lines = ['.. list-table::', '   :header-rows: 1', '']
        for row in cells:
            for i, cell in enumerate(row):
                cell = re.sub(r'(?<!`)`([^`]+)`(?!`)', r'``\1``', cell)
                lines.append(('   * - ' if i == 0 else '     - ') +
                             cell)
        node = nodes.container()
        self.state.nested_parse(StringList(lines, str(path)),
                                self.content_offset, node)
        return node.children


_CITATION = re.compile(r'docs/algorithms\.md(?:(\s+)(§[\d.]*\d|D\d+))?')
_SKIP = (nodes.literal, nodes.literal_block, nodes.math, nodes.math_block,
         nodes.reference, nodes.title)


_SECTIONS: dict = {}  # filled once per build


def _sections(app) -> dict:
    if 'table' not in _SECTIONS:
        table = {}
        if 'algorithms' in app.env.found_docs:
            doctree = app.env.get_doctree('algorithms')
            for sec in doctree.findall(nodes.section):
                m = re.match(r'(§[\d.]*\d|D\d+)\b', sec[0].astext())
                if m and sec['ids']:
                    table.setdefault(m.group(1), sec['ids'][0])
        _SECTIONS['table'] = table
    return _SECTIONS['table']


def link_citations(app, doctree, docname) -> None:
    if app.builder.format != 'html':
        return
    uri = app.builder.get_relative_uri(docname, 'algorithms')
    sections = None
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or any(isinstance(a, _SKIP) for a in
                                 _ancestors(text)):
            continue
        source = str(text)
        if 'docs/algorithms.md' not in source:
            continue
        sections = sections if sections is not None else _sections(app)
        new, pos = [], 0
        for m in _CITATION.finditer(source):
            new.append(nodes.Text(source[pos:m.start()]))
            label = m.group(2)
            anchor = ''
            if label:
                anchor = sections.get(label.rstrip('.'), '')
                if not anchor:
                    logger.warning('docs/algorithms.md has no section %s',
                                   label, location=parent)
            ref = nodes.reference('', '', internal=True,
                                  refuri=uri + ('#' + anchor if anchor
                                                else ''))
            ref += nodes.Text(m.group(0))
            new.append(ref)
            pos = m.end()
        new.append(nodes.Text(source[pos:]))
        parent.replace(text, [n for n in new if n.astext() or
                              isinstance(n, nodes.reference)])


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


# -- references into mmdiff by their defining module ------------------------
# Docstrings may name an object where it is defined
# (``mmdiff.nn.models.base.Recommender``) or relative to the module that
# defines it (``Recommender`` in ``mmdiff/nn/models/diffmm.py``); the API
# reference documents each object once, under its public name
# (``mmdiff.nn.models.Recommender``).  This resolves such a reference by
# object identity; a reference to an object that is not documented anywhere
# still fails the build.


def _lookup(path: str):
    parts = path.split('.')
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return getattr(obj, '__func__', obj)  # bound (class) methods
    return None


_BY_ID: dict = {}  # per build process: object ids are not picklable state


def _documented(env) -> dict:
    objects = env.get_domain('py').objects
    if _BY_ID.get('size') != len(objects):
        table = {}
        for name, entry in sorted(objects.items(), key=lambda kv: len(kv[0])):
            if getattr(entry, 'aliased', False):
                continue
            obj = _lookup(name)
            if obj is not None and not isinstance(obj, (int, float, str)):
                table.setdefault(id(obj), (name, entry.objtype))
        _BY_ID.update(size=len(objects), table=table)
    return _BY_ID['table']


def _candidates(node):
    target = re.sub(r'\s+', '', node['reftarget']).lstrip('.~')
    yield target
    mod, cls = node.get('py:module'), node.get('py:class')
    m = re.search(r'docstring of ([\w.]+)', node.source or '')
    scopes = []
    if m:
        defined = m.group(1).split('.')
        scopes += ['.'.join(defined[:i]) for i in range(len(defined), 0, -1)]
    if mod and cls:
        scopes.append(f'{mod}.{cls}')
    if mod:
        scopes.append(mod)
    for scope in scopes:
        yield f'{scope}.{target}'


def _resolve_by_identity(app, env, node, contnode):
    if node.get('refdomain') != 'py':
        return None
    domain = env.get_domain('py')
    table = _documented(env)
    for path in _candidates(node):
        if not path.startswith('mmdiff'):
            continue
        obj = _lookup(path)
        if obj is None:
            continue
        hit = table.get(id(obj))
        if hit is None and isinstance(obj, types.ModuleType):
            # an undocumented submodule: its nearest documented package
            parent = path
            while hit is None and '.' in parent:
                parent = parent.rsplit('.', 1)[0]
                hit = table.get(id(_lookup(parent)))
        if hit is None:
            continue
        name, objtype = hit
        role = 'mod' if objtype == 'module' else 'obj'
        return domain.resolve_xref(env, node['refdoc'], app.builder, role,
                                   name, node, contnode)
    # an unqualified name in a type hint (``graph: Graph``): the one
    # documented mmdiff object of that name, if there is exactly one
    target = re.sub(r'\s+', '', node['reftarget']).lstrip('.~')
    if '.' not in target:
        names = {name for name, _ in table.values()
                 if name.rsplit('.', 1)[-1] == target}
        if len(names) == 1:
            return domain.resolve_xref(env, node['refdoc'], app.builder,
                                       'obj', names.pop(), node, contnode)
    return None


def _data_comment(app, what, name, obj, options, lines):
    # A constant re-exported by a package (``mmdiff.graph.LAYOUTS``) keeps
    # the ``#:`` comment of the module that defines it.
    if what != 'data' or not name.startswith('mmdiff.'):
        return
    own = prepare_docstring(type(obj).__doc__ or '')
    if lines and [ln for ln in lines if ln] != [ln for ln in own if ln]:
        return
    del lines[:]  # the docstring of the value's type says nothing here
    package, attr = name.rsplit('.', 1)
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith(package + '.') or module is None or \
                getattr(module, attr, None) is not obj:
            continue
        try:
            analyzer = ModuleAnalyzer.for_module(modname)
            docs = analyzer.find_attr_docs().get(('', attr))
        except Exception:  # noqa: BLE001 - no source: no comment
            docs = None
        if docs:
            lines.extend(list(docs))
            return


def setup(app):
    app.connect('missing-reference', _resolve_by_identity)
    app.connect('autodoc-process-docstring', _data_comment)
    app.connect('builder-inited', lambda app: _SECTIONS.clear())
    app.connect('doctree-resolved', link_citations)
    app.add_directive('mmdiff-cli-help', CliHelp)
    app.add_directive('mmdiff-scripts', Scripts)
    app.add_directive('mmdiff-results-table', ResultsTable)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
