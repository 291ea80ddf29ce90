"""The table writer and the report's Markdown-to-HTML: cells that would break a table stay one
cell, CSV round-trips, lists are lists, raw HTML is escaped."""

import csv
import io
import re

import numpy as np

from tl_langneurons.report.html import markdown_to_html
from tl_langneurons.report.tables import csv_text, markdown_matrix, markdown_table


def test_markdown_table_known_rows():
    md = markdown_table(["lang", "rate", "note"], [["de", 0.5, None], ["ja", 0.125, "a|b\nc"]], ".2f")
    assert md == ("| lang | rate | note |\n"
                  "|---|---|---|\n"
                  "| de | 0.50 |  |\n"
                  "| ja | 0.12 | a\\|b c |\n")


def test_markdown_matrix_labels():
    md = markdown_matrix(["en", "ja"], ["en", "ja"], np.array([[1.0, -0.5], [0.25, 0.0]]), "+.1f")
    assert md.splitlines() == ["|  | en | ja |", "|---|---|---|", "| en | +1.0 | -0.5 |", "| ja | +0.2 | +0.0 |"]


def test_pipe_in_cell_is_one_cell_in_html():
    md = markdown_table(["token", "lang"], [["a | b", "en"], ["|", "ja"]])
    page = markdown_to_html(md)
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert cells == ["a | b", "en", "|", "ja"]
    assert page.count("<tr>") == 3


def test_list_becomes_ul_and_html_is_escaped():
    page = markdown_to_html("# Title\n\n- one\n- two <script>x</script>\n\n**bold**\n", title="a <b>")
    assert re.search(r"<ul>\s*<li>one</li>\s*<li>two &lt;script&gt;x&lt;/script&gt;</li>\s*</ul>", page)
    assert "<script>" not in page and "<h1>Title</h1>" in page and "<strong>bold</strong>" in page
    assert "<title>a &lt;b&gt;</title>" in page


def test_csv_round_trip_with_commas_quotes_and_newlines():
    rows = [{"lang": "de", "text": 'he said "hi", then left', "n": 3},
            {"lang": "ja", "text": "a,b\nc", "n": None, "extra": "dropped"}]
    text = csv_text(["lang", "text", "n"], rows)
    back = list(csv.DictReader(io.StringIO(text)))
    assert back == [{"lang": "de", "text": 'he said "hi", then left', "n": "3"},
                    {"lang": "ja", "text": "a,b\nc", "n": ""}]
    assert text.startswith("lang,text,n\n")
