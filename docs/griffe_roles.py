"""A griffe extension for the API reference: Sphinx roles in docstrings (``:class:`x```) shown as code.

tvlens's docstrings cite symbols with Sphinx roles; mkdocstrings renders Markdown, where a role
would show as literal text. ``:func:`~tvlens.steer``` becomes `` `tvlens.steer` ``.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: f"`{m.group(1)}`", obj.docstring.value)
