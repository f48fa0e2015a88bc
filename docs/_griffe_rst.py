"""A griffe extension for the docs build: Sphinx markup in docstrings -> Markdown.

The docstrings are Google style, but cite objects the Sphinx way
(``:class:`concurrent.futures.Future```) and end a paragraph with ``::``
before a literal block. mkdocstrings renders docstrings as Markdown, where
both would show up as raw markup, so this extension rewrites them when the
API is loaded: a role becomes inline code (``~`` keeps the last name only, as
in Sphinx) and a trailing ``::`` becomes ``:``.

Only the docs build loads this file: ``mkdocs.yml`` lists it under ``hooks``
(so MkDocs finds it relative to the config file, from any working
directory), and it registers itself as the module ``_executors_docs``, which
is the name the mkdocstrings ``extensions`` option imports it by.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`"
)
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def to_markdown(text: str) -> str:
    """Rewrite the Sphinx markup of one docstring."""
    return _LITERAL_MARKER.sub(r"\1:", _ROLE.sub(_code, text))


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrites every docstring as it is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)


# MkDocs loads a hook under its path as module name; give griffe a name it
# can import.
sys.modules.setdefault("_executors_docs", sys.modules[__name__])
