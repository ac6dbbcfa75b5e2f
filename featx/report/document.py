"""One document model for every report featx writes, rendered three ways from the same content.

A command builds a :class:`Document` -- a title, blocks, sections -- and :func:`write_report` writes
``<record>.json`` (the machine record), ``report.md`` (to read) and a self-contained ``report.html`` (to share:
plots and thumbnails embedded as base64 PNG, one stylesheet). ``featx grid``, ``featx rank``, ``featx adapt`` and
``featx audit`` all go through here, so a report looks and behaves the same whichever command wrote it.

Blocks: :class:`Paragraph` and :class:`Bullets` (text with ``**bold**`` and ```code``` marks, which HTML renders
as such), :class:`Table`, :class:`Figure` (a PNG from :func:`featx.report.plots.png`), :class:`Gallery` of
thumbnail :class:`Card` s or :class:`Pair` s. Figures and galleries appear in the HTML only (the Markdown says
where they are); a block wrapped in :class:`Only` appears in one format.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

log = logging.getLogger("featx")

__all__ = ["Paragraph", "Bullets", "Table", "Figure", "Card", "Pair", "Gallery", "Only", "Section", "Document",
           "markdown", "markdown_block", "to_html", "write_report", "write_files"]


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]
    #: ``"warn"`` renders them as warnings in HTML
    kind: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    png: str  # base64
    caption: str


@dataclass
class Card:
    png: str  # base64, "" when the image is not readable here
    caption: str
    alt: str = ""


@dataclass
class Pair:
    a: Card
    b: Card
    note: str


@dataclass
class Gallery:
    items: list[Union[Card, Pair]]
    empty: str = "none"


@dataclass
class Only:
    """``block`` in one output format only (``"md"`` or ``"html"``)."""

    fmt: str
    block: object


Block = Union[Paragraph, Bullets, Table, Figure, Gallery, Only]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


@dataclass
class Document:
    """A report: its title, opening blocks, sections, the JSON record written beside it (``record_name``), and its
    warnings (a last "Warnings" section; :func:`write_report` also logs each one)."""

    title: str
    intro: list = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    record_name: str = "results.json"
    warnings: list[str] = field(default_factory=list)

    def all_sections(self) -> list[Section]:
        """The sections, then the warnings' section when there are warnings."""
        return [*self.sections, *([Section("Warnings", [Bullets(self.warnings, "warn")])] if self.warnings else [])]


# -- Markdown ---------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_block(block, out: list[str]) -> None:
    if isinstance(block, Only):
        if block.fmt == "md":
            _md_block(block.block, out)
        return
    if isinstance(block, Paragraph):
        out += [block.text, ""]
    elif isinstance(block, Bullets):
        out += [*(f"- {item}" for item in block.items), ""]
    elif isinstance(block, Table):
        out += ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header),
                *("| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows), ""]
    elif isinstance(block, Figure):
        out += [f"(plot in report.html: {block.caption})", ""]
    elif isinstance(block, Gallery):
        out += [f"(thumbnails in report.html: {len(block.items)})" if block.items else block.empty, ""]
    else:
        raise TypeError(f"not a report block: {block!r}")


def markdown_block(block) -> str:
    """One block as Markdown (a table for ``featx report``, say)."""
    out: list[str] = []
    _md_block(block, out)
    return "\n".join(out).rstrip("\n") + "\n"


def markdown(doc: Document) -> str:
    """The document as Markdown."""
    out = [f"# {doc.title}", ""]
    for block in doc.intro:
        _md_block(block, out)
    for section in doc.all_sections():
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            _md_block(block, out)
    return "\n".join(out).rstrip("\n") + "\n"


# -- HTML -------------------------------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;margin:1em}
.warn{color:#a40}figure.t{margin:4px;width:120px;vertical-align:top;font-size:11px}
figure.t img{width:72px;height:72px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc}
.pair{display:inline-block;border:1px solid #ddd;margin:4px;padding:4px}.pair span{display:block;font-size:11px}"""


def _inline(text: str) -> str:
    """Escaped text with ``**bold**`` and ```code``` marks as HTML."""
    text = html.escape(str(text))
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _card(card: Card) -> str:
    esc = html.escape
    img = (f'<img alt="{esc(card.alt or card.caption)}" src="data:image/png;base64,{card.png}">' if card.png
           else "<div>(no image)</div>")
    return f'<figure class="t">{img}<figcaption>{esc(card.caption)}</figcaption></figure>'


def _html_block(block) -> str:
    esc = html.escape
    if isinstance(block, Only):
        return _html_block(block.block) if block.fmt == "html" else ""
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        cls = f' class="{block.kind}"' if block.kind else ""
        return f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(str(h))}</th>" for h in block.header)
        rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in block.rows)
        return f"<table><tr>{head}</tr>{rows}</table>"
    if isinstance(block, Figure):
        return (f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{block.png}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    if isinstance(block, Gallery):
        if not block.items:
            return f"<p>{esc(block.empty)}</p>"
        return "".join(_card(i) if isinstance(i, Card) else
                       f'<div class="pair">{_card(i.a)}{_card(i.b)}<span>{esc(i.note)}</span></div>'
                       for i in block.items)
    raise TypeError(f"not a report block: {block!r}")


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page."""
    parts = [f"<h1>{html.escape(doc.title)}</h1>", *(_html_block(b) for b in doc.intro)]
    for section in doc.all_sections():
        parts += [f"<h2>{html.escape(section.title)}</h2>", *(_html_block(b) for b in section.blocks)]
    body = "\n".join(p for p in parts if p)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(doc.title)}</title>\n'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


# -- files ------------------------------------------------------------------------------------------------------

def write_report(out_dir, doc: Document) -> list[Path]:
    """``<record_name>``, ``report.md`` and ``report.html`` in ``out_dir``; each of the document's warnings is
    also logged (``featx`` logger). Returns the paths."""
    paths = write_files(out_dir, {doc.record_name: json.dumps(doc.record, indent=2, default=str) + "\n",
                                  "report.md": markdown(doc), "report.html": to_html(doc)})
    for warning in doc.warnings:
        log.warning(f"warning: {warning}")
    return paths


def write_files(out_dir, texts: dict[str, str]) -> list[Path]:
    """Each ``name -> text`` written into ``out_dir`` (created) through a temporary file and a rename, so that a
    report is never half-written; returns the paths in order."""
    from ..util import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        with atomic_write(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(out / name)
    return paths
