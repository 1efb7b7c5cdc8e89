"""A self-contained offline HTML page from plotly figures and tables (plotly.js inlined once, no CDN)."""

from __future__ import annotations

import html
import os
from pathlib import Path


def write_page(path: str | os.PathLike, title: str, sections: list[tuple[str, object, object]], *, overwrite: bool = True) -> Path:
    """``sections``: (heading, plotly figure or None, pandas DataFrame or None). Written atomically."""
    from tvlens._io import atomic_write

    parts, first = [], True
    for heading, fig, frame in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if fig is not None:
            # plotly.js goes inline with the first figure only; the page never fetches anything
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
        if frame is not None:
            parts.append(frame.to_html(float_format=lambda x: f"{x:.3f}", na_rep="-"))
    body = "\n".join(parts)
    text = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)
