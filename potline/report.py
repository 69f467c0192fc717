"""A small, generic HTML report writer: title, sections of text, tables and PNG figures.

One self-contained HTML file (figures embedded as base64 PNG, optionally also saved
next to it) plus, if asked, a JSON file with the same facts for machines. Used by
``potline shadow`` and ``campaign``; ``sim`` and ``demo`` can reuse it::

    rep = Report("Shadow test", subtitle="3 kA pot, candidate hot_trim")
    sec = rep.section("Verdict")
    sec.text("Ready: every criterion passes.")
    sec.table([{"criterion": "purity", "value": 99.74}], caption="criteria")
    sec.figure(fig, name="voltage", caption="measured vs twin")   # matplotlib Figure or PNG bytes
    rep.write("out/shadow")            # out/shadow/report.html (+ PNGs), returns the path
    write_json("out/shadow/report.json", data)

No matplotlib import here: a figure is anything with ``savefig(buf, format="png")``,
or PNG bytes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Section", "to_jsonable", "write_json"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.1em}.subtitle{color:#555;margin-top:0}.meta{color:#888;font-size:.85em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.caption{color:#555;font-size:.9em;margin:.2em 0}
.badge{display:inline-block;padding:.15em .6em;border-radius:.3em;font-weight:600}
.ok{background:#d9f2d9;color:#145214}.bad{background:#f8d7d7;color:#7a1010}.warn{background:#fff0c2;color:#6b5000}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s or "figure"


def _fmt(v: Any) -> tuple[str, bool]:
    """(cell text, is-number) for a table cell."""
    if v is None:
        return "", False
    if isinstance(v, bool):
        return ("yes" if v else "no"), False
    if isinstance(v, int):
        return f"{v:d}", True
    if isinstance(v, float) or hasattr(v, "dtype"):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v), False
        if math.isnan(f):
            return "–", True
        if f != 0 and (abs(f) >= 1e6 or abs(f) < 1e-3):
            return f"{f:.4g}", True
        return f"{f:.4g}" if abs(f) < 10 else f"{f:,.2f}".rstrip("0").rstrip("."), True
    return str(v), False


@dataclass
class _Block:
    kind: str  # text | html | table | figure | badge | pre
    payload: Any
    caption: str = ""
    name: str = ""


@dataclass
class Section:
    """One headed section of a report; add blocks in display order."""

    heading: str
    blocks: list[_Block] = field(default_factory=list)

    def text(self, text: str) -> Section:
        """A paragraph (plain text, escaped; blank lines start new paragraphs)."""
        self.blocks.append(_Block("text", str(text)))
        return self

    def badge(self, text: str, status: str = "ok") -> Section:
        """A coloured label: status ``ok``, ``bad`` or ``warn``."""
        if status not in ("ok", "bad", "warn"):
            raise ValueError(f"badge status must be ok, bad or warn, got {status!r}")
        self.blocks.append(_Block("badge", (str(text), status)))
        return self

    def bullets(self, items: Iterable[str]) -> Section:
        """A bulleted list of plain-text items."""
        self.blocks.append(_Block("bullets", [str(i) for i in items]))
        return self

    def preformatted(self, text: str) -> Section:
        """Monospaced text (logs, config excerpts)."""
        self.blocks.append(_Block("pre", str(text)))
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]] | Any,
        columns: Sequence[str] | None = None,
        caption: str = "",
    ) -> Section:
        """A table from a list of dicts (or a pandas DataFrame).

        Args:
            rows: records; keys become column headers.
            columns: column order/subset (default: keys in first-seen order).
            caption: text under the table.
        """
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
            records = rows.to_dict(orient="records")
            columns = list(columns or [str(c) for c in rows.columns])
        else:
            records = [dict(r) for r in rows]
        if columns is None:
            columns = []
            for r in records:
                for k in r:
                    if k not in columns:
                        columns.append(k)
        self.blocks.append(_Block("table", (list(columns), records), caption=caption))
        return self

    def kv(self, pairs: Mapping[str, Any], caption: str = "") -> Section:
        """A two-column table of name → value."""
        return self.table([{"quantity": k, "value": v} for k, v in pairs.items()], caption=caption)

    def figure(self, fig: Any, name: str | None = None, caption: str = "", dpi: int = 110) -> Section:
        """A PNG figure: a matplotlib-like figure (``savefig``) or PNG bytes.

        The figure is rendered now (so the caller may close it afterwards).
        """
        if isinstance(fig, (bytes, bytearray)):
            png = bytes(fig)
        elif hasattr(fig, "savefig"):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            png = buf.getvalue()
        else:
            raise TypeError(f"figure must be PNG bytes or have savefig(), got {type(fig).__name__}")
        if not png.startswith(b"\x89PNG"):
            raise ValueError("figure bytes are not a PNG")
        self.blocks.append(_Block("figure", png, caption=caption, name=_slug(name or caption or self.heading)))
        return self


class Report:
    """An HTML report: a title, optional subtitle, then sections."""

    def __init__(self, title: str, subtitle: str = "", generated: str | None = None) -> None:
        self.title = str(title)
        self.subtitle = str(subtitle)
        self.generated = generated or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.sections: list[Section] = []

    def section(self, heading: str) -> Section:
        """Append and return a new section."""
        s = Section(str(heading))
        self.sections.append(s)
        return s

    @property
    def figures(self) -> list[tuple[str, bytes]]:
        """(file name, PNG bytes) of every figure, names made unique."""
        seen: dict[str, int] = {}
        out = []
        for s in self.sections:
            for b in s.blocks:
                if b.kind == "figure":
                    n = seen.get(b.name, 0)
                    seen[b.name] = n + 1
                    out.append((f"{b.name}{'' if n == 0 else f'-{n + 1}'}.png", b.payload))
        return out

    def to_html(self, image_src: Mapping[int, str] | None = None) -> str:
        """The page. ``image_src`` maps figure index → URL; default embeds data URIs."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{e(self.subtitle)}</p>')
        parts.append(f'<p class="meta">generated {e(self.generated)}</p>')
        if len(self.sections) > 2:
            parts.append(
                "<nav><ul>"
                + "".join(f'<li><a href="#s{i}">{e(s.heading)}</a></li>' for i, s in enumerate(self.sections))
                + "</ul></nav>"
            )
        fig_i = 0
        for i, s in enumerate(self.sections):
            parts.append(f'<section id="s{i}"><h2>{e(s.heading)}</h2>')
            for b in s.blocks:
                if b.kind == "text":
                    for para in str(b.payload).split("\n\n"):
                        parts.append(f"<p>{e(para).replace(chr(10), '<br>')}</p>")
                elif b.kind == "badge":
                    text, status = b.payload
                    parts.append(f'<p><span class="badge {status}">{e(text)}</span></p>')
                elif b.kind == "bullets":
                    parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b.payload) + "</ul>")
                elif b.kind == "pre":
                    parts.append(f"<pre>{e(b.payload)}</pre>")
                elif b.kind == "table":
                    cols, records = b.payload
                    parts.append(
                        "<table><thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in cols) + "</tr></thead><tbody>"
                    )
                    for r in records:
                        cells = []
                        for c in cols:
                            txt, num = _fmt(r.get(c))
                            cells.append(f'<td class="num">{e(txt)}</td>' if num else f"<td>{e(txt)}</td>")
                        parts.append("<tr>" + "".join(cells) + "</tr>")
                    parts.append("</tbody></table>")
                    if b.caption:
                        parts.append(f'<p class="caption">{e(b.caption)}</p>')
                elif b.kind == "figure":
                    if image_src is not None and fig_i in image_src:
                        src = e(image_src[fig_i])
                    else:
                        src = "data:image/png;base64," + base64.b64encode(b.payload).decode("ascii")
                    alt = e(b.caption or b.name)
                    cap = f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else ""
                    parts.append(f'<figure><img src="{src}" alt="{alt}">{cap}</figure>')
                    fig_i += 1
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path, png_files: bool = True, embed: bool = True) -> Path:
        """Write the report.

        Args:
            path: a directory (gets ``report.html``) or an ``.html`` file path.
            png_files: also save every figure as a PNG next to the HTML.
            embed: embed the figures in the HTML (self-contained); if False the page
                links the saved PNG files (needs ``png_files``).

        Returns:
            the HTML file path.
        """
        path = Path(path)
        html_path = path if path.suffix.lower() in (".html", ".htm") else path / "report.html"
        html_path.parent.mkdir(parents=True, exist_ok=True)
        src: dict[int, str] | None = None
        if png_files or not embed:
            src = {}
            for i, (name, png) in enumerate(self.figures):
                (html_path.parent / name).write_bytes(png)
                src[i] = name
        html_path.write_text(self.to_html(None if embed else src), encoding="utf-8")
        return html_path


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, dataclasses, paths, NaN (→ null)."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    return str(obj)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN → null, numpy → lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return path
