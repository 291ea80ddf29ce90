"""``{cli-reference}``: the command-line reference rendered from ``tl_langneurons.cli.build_parser()``.

Every subcommand becomes a section with its help line, its usage as argparse prints it, and one entry per
option (flags, metavar, help, default, choices). The text is put into docutils nodes as plain text, never
parsed as markup, so no help string can break the build; the options are never written twice.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.parsers.rst import Directive, directives


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def _expand(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def _describe(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = _expand(parser, action)
    extra = []
    if action.choices is not None and not isinstance(action.choices, dict):
        extra.append("one of " + ", ".join(str(c) for c in action.choices))
    if action.required and action.option_strings:
        extra.append("required")
    elif (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
          and "%(default)" not in (action.help or "") and "default" not in text):
        extra.append(f"default: {action.default}")
    if extra:
        text = (text + " " if text else "") + "(" + "; ".join(extra) + ")"
    return text


def _term(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = parser._get_formatter()
    if not action.option_strings:
        return fmt._metavar_formatter(action, action.dest)(1)[0] + (" ..." if action.nargs in ("+", "*") else "")
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    return ", ".join(f"{o} {fmt._format_args(action, action.dest.upper())}" for o in action.option_strings)


def _options(parser: argparse.ArgumentParser) -> nodes.definition_list:
    dl = nodes.definition_list()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        item = nodes.definition_list_item()
        item += nodes.term("", "", nodes.literal(text=_term(parser, action)))
        item += nodes.definition("", nodes.paragraph(text=_describe(parser, action)))
        dl += item
    return dl


class CliReference(Directive):
    """Sections for the parser's global options and each subcommand, in the parser's order."""

    required_arguments = 0
    option_spec = {"module": directives.unchanged, "func": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        import importlib

        module = importlib.import_module(self.options.get("module", "tl_langneurons.cli"))
        parser = getattr(module, self.options.get("func", "build_parser"))()
        doc = self.state.document
        out: list[nodes.Node] = []

        def section(title: str, ident: str) -> nodes.section:
            s = nodes.section(ids=[nodes.make_id(ident)], names=[nodes.fully_normalize_name(ident)])
            s += nodes.title(text=title)
            doc.note_implicit_target(s)
            return s

        top = section(f"{parser.prog} (global options)", f"cli-{parser.prog}")
        top += nodes.literal_block(text=parser.format_usage().strip())
        top += _options(parser)
        out.append(top)
        for name, help_text, sub in _subcommands(parser):
            s = section(f"{parser.prog} {name}", f"cli-{name}")
            if help_text:
                s += nodes.paragraph(text=help_text[0].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."))
            s += nodes.literal_block(text=sub.format_usage().strip())
            s += _options(sub)
            out.append(s)
        return out


def setup(app):
    app.add_directive("cli-reference", CliReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
