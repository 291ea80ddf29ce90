"""The table writer moved to :mod:`tl_langneurons.tables` (a base module, used by every stage); this
name is kept for existing imports."""

from ..tables import cell, csv_text, markdown_matrix, markdown_table

__all__ = ["cell", "csv_text", "markdown_matrix", "markdown_table"]
