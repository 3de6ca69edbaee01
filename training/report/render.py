"""The two renderers of the report's blocks: Markdown (linking the PNG files) and self-contained HTML."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from training.report.blocks import Block, Bullets, Heading, Images, KeyFigures, Table, Text


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    lines = [f"# {title}", "", f"_{subtitle}_", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Text):
            lines += [f"_{block.text}_" if block.muted else block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, KeyFigures):
            lines += [
                f"- **{label}**: {value}" + (f" ({hint})" if hint else "") for label, value, hint in block.figures
            ]
            lines.append("")
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(md_cell(h) or " " for h in block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            for index, row in enumerate(block.rows):
                cells = [md_cell(cell) for cell in row]
                if index in block.highlight:
                    cells = [f"**{cell}**" if cell else cell for cell in cells]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        elif isinstance(block, Images):
            lines += [f"![{caption}]({name})" for name, caption in block.images] + [""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 2px solid #e3e7ea; padding-bottom: 0.3rem; }
.subtitle, .muted { color: #6b7780; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 0.8rem; margin: 1.2rem 0; }
.figure { background: #f4f7f9; border-radius: 8px; padding: 0.7rem 0.9rem; }
.figure .label { font-size: 0.8rem; color: #6b7780; text-transform: uppercase; letter-spacing: 0.04em; }
.figure .value { font-size: 1.4rem; font-weight: 600; color: #1f5f8b; line-height: 1.25; }
.figure .hint { font-size: 0.8rem; color: #6b7780; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.35rem 0.7rem; border-bottom: 1px solid #e3e7ea; vertical-align: top; }
td.short { white-space: nowrap; }
th { background: #f4f7f9; }
tr.highlight td { background: #eaf4ec; font-weight: 600; }
tr.failed td { color: #a94442; }
td.params { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.78rem; max-width: 360px; }
.images { display: flex; flex-wrap: wrap; gap: 1rem; }
.images figure { margin: 0.5rem 0; flex: 1 1 320px; max-width: 560px; }
.images img { width: 100%; border: 1px solid #e3e7ea; border-radius: 6px; }
figcaption { font-size: 0.85rem; color: #6b7780; }
"""


def embedded_png(directory: Path, name: str) -> str:
    """A data URI of the PNG, so the HTML needs no other files."""
    return "data:image/png;base64," + base64.b64encode((directory / name).read_bytes()).decode("ascii")


def cell_class(column: int, cell: str, params_column: int) -> str:
    """Numbers and short labels stay on one line; parameters and long text wrap."""
    if column == params_column:
        return "params"
    return "short" if len(cell) <= SHORT_CELL else "long"


SHORT_CELL = 24


def render_table_html(table: Table) -> str:
    escape = html.escape
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    params_column = table.headers.index("Parameters") if "Parameters" in table.headers else -1
    for index, row in enumerate(table.rows):
        css = "highlight" if index in table.highlight else ("failed" if index in table.failed else "")
        cells = "".join(
            f'<td class="{cell_class(column, cell, params_column)}">{escape(cell)}</td>'
            for column, cell in enumerate(row)
        )
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(title: str, subtitle: str, blocks: Sequence[Block], directory: Path) -> str:
    escape = html.escape
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="subtitle">{escape(subtitle)}</p>']
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(
                f'<p class="muted">{escape(block.text)}</p>' if block.muted else f"<p>{escape(block.text)}</p>"
            )
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, KeyFigures):
            cards = "".join(
                f'<div class="figure"><div class="label">{escape(label)}</div>'
                f'<div class="value">{escape(value)}</div><div class="hint">{escape(hint)}</div></div>'
                for label, value, hint in block.figures
            )
            parts.append(f'<div class="figures">{cards}</div>')
        elif isinstance(block, Table):
            parts.append(render_table_html(block))
        elif isinstance(block, Images):
            figures = "".join(
                f'<figure><img src="{embedded_png(directory, name)}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
                for name, caption in block.images
            )
            parts.append(f'<div class="images">{figures}</div>')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
