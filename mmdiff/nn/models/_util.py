r"""Helpers shared by the model implementations."""
from __future__ import annotations

import inspect
from typing import Dict, Iterable

from mmdiff.errors import ConfigError


def check_hparams(cls_name: str, given: Dict[str, object],
                  allowed: Iterable[str]) -> None:
    r"""Raises :class:`ConfigError` naming every unknown hyper-parameter."""
    allowed = set(allowed)
    unknown = sorted(k for k in given if k not in allowed)
    if unknown:
        raise ConfigError(f"{cls_name}: unknown hyper-parameter(s) "
                          f"{', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(allowed))}")


def signature_names(fn) -> set:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {
                'self', 'cls', 'data'}
