"""HTML renderings of our Markdown tables and report, for Snakemake's report page.

``snakemake --report results/report.html`` embeds every output tagged with ``report()``; it shows
images and HTML in the page, other files only as downloads. So ``atomsift table`` and
``atomsift report`` also write an HTML twin of their Markdown (``--html``), rendered here.

This renders the Markdown *we* write (``report/tables.py``, ``report/report.py``): ATX headings,
paragraphs, ``- `` lists, pipe tables, ``**bold**``, ``*italic*`` and ``code``; it is not a general
Markdown implementation (none is a dependency). Every piece of text is HTML-escaped first.
"""

from __future__ import annotations

import html
import re

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1f2933; max-width: 80em; }
h1, h2, h3 { color: #102a43; } h2 { border-bottom: 1px solid #d9e2ec; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #bcccdc; padding: .3em .6em; text-align: left; }
th { background: #f0f4f8; } tr:nth-child(even) td { background: #fafbfc; }
code { background: #f0f4f8; padding: 0 .2em; border-radius: 3px; }
"""

_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])"), r"<em>\1</em>"),
)


def inline(text: str) -> str:
    """Escape ``text``, then render code spans, bold and italic."""
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?(-{3,}:?)?\s*\|?", line.strip()))


def markdown_to_html(text: str, title: str) -> str:
    """A standalone HTML page of the Markdown ``text``."""
    body: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = len(m.group(1))
            body.append(f"<h{level}>{inline(m.group(2).strip())}</h{level}>")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            head = "".join(f"<th>{inline(c)}</th>" for c in _cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
            continue
        if re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                item = re.sub(r"^\s*[-*]\s+", "", lines[i])
                items.append(f"<li>{inline(item)}</li>")
                i += 1
            body.append(f"<ul>{''.join(items)}</ul>")
            continue
        para = [line.strip()]  # a paragraph runs to a blank line or the start of another block
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6})\s|\s*[-*]\s+|\s*\|", lines[i]):
            para.append(lines[i].strip())
            i += 1
        body.append(f"<p>{inline(' '.join(para))}</p>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
