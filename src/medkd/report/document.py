"""A tiny report document model rendered to both Markdown and standalone HTML.

Reports are built as a list of blocks (headings, paragraphs, tables, images) so the Markdown and the
HTML always say the same thing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from medkd.io import atomic_write_text

__all__ = ["Document"]


@dataclass
class Document:
    """Blocks of a report; ``heading`` / ``paragraph`` / ``table`` / ``image`` append to it."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list[str]], caption: str | None = None) -> None:
        self.blocks.append(("table", headers, rows, caption))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                _, headers, rows, caption = block
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
                out.append("")
                if caption:
                    out += [f"*{caption}*", ""]
            elif kind == "img":
                out += [f"![{block[2]}]({block[1]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        body = [f"<h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                _, headers, rows, caption = block
                head = "".join(f"<th>{esc(h)}</th>" for h in headers)
                trs = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                cap = f"<caption>{esc(caption)}</caption>" if caption else ""
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "img":
                body.append(f'<figure><img src="{esc(block[1])}" alt="{esc(block[2])}"><figcaption>'
                            f"{esc(block[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
                 "text-align:right}th{background:#eee}caption{caption-side:bottom;font-size:85%;color:#555;"
                 "text-align:left}img{max-width:100%}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` into ``folder`` (atomically)."""
        folder = Path(folder)
        md, htm = folder / f"{stem}.md", folder / f"{stem}.html"
        atomic_write_text(md, self.markdown())
        atomic_write_text(htm, self.html())
        return md, htm
