"""Markdown to HTML for the report: CommonMark plus GFM tables (markdown-it-py), raw HTML escaped."""

from __future__ import annotations

import html

from markdown_it import MarkdownIt

_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto}"
          "table{border-collapse:collapse}th,td{border:1px solid #999;padding:3px}img{max-width:100%}")


def markdown_to_html(md: str, title: str = "report") -> str:
    """A whole HTML page of ``md``; HTML inside the Markdown is shown as text, not interpreted."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")
