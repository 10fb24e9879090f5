"""Sphinx extension: the command-line reference, generated from nnc's argument parser.

The directive ``nnc-cli`` renders the ``--help`` text of ``nnc`` and of every subcommand
found in :func:`nnc.cli.build_parser` as literal blocks, each in a section with the label
``cli-<subcommand>`` (``cli-nnc`` for the main command).  Nothing is written by hand, so a
new option or subcommand appears in the documentation as soon as it is in the parser.

``help_texts()`` is what the directive renders; ``tests/test_docs.py`` compares it (and
the built HTML) with the output of ``nnc <subcommand> --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os

try:
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective
except ImportError:  # help_texts() is also used by tests/test_docs.py where Sphinx is absent
    nodes = None
    SphinxDirective = object

#: the terminal width the help is rendered for (argparse reads $COLUMNS)
COLUMNS = 80


@contextlib.contextmanager
def _help_environment():
    """Format help as ``nnc ... --help`` prints it into an 80-column pipe: no colour."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "PYTHON_COLORS")}
    os.environ["COLUMNS"] = str(COLUMNS)
    os.environ["NO_COLOR"] = "1"
    for k in ("FORCE_COLOR", "PYTHON_COLORS"):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def subcommands(parser: argparse.ArgumentParser) -> dict:
    """{name: (help text, sub-parser)} of the parser's subcommands, in the order they were added."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[name] = (helps.get(name) or sub.description or "", sub)
    return out


def help_texts() -> list[tuple[str, str, str]]:
    """[(subcommand or "", one-line summary, --help text)], the main command first."""
    from nnc.cli import build_parser

    with _help_environment():
        parser = build_parser()
        rows = [("", parser.description or "", parser.format_help())]
        for name, (summary, sub) in subcommands(parser).items():
            rows.append((name, summary, sub.format_help()))
    return rows


class CliReference(SphinxDirective):
    """``nnc-cli``: one section per command with its help text as a literal block."""

    has_content = False

    def run(self):
        result = []
        for name, summary, text in help_texts():
            label = f"cli-{name or 'nnc'}"
            title = f"nnc {name}" if name else "nnc"
            section = nodes.section(ids=[label], names=[label])
            section += nodes.title(title, "", nodes.literal(title, title))
            if summary:
                section += nodes.paragraph(summary, summary)
            block = nodes.literal_block(text, text, language="text")
            block["classes"].append("nnc-cli-help")
            section += block
            self.state.document.note_explicit_target(section, section)
            result.append(section)
        # the help text depends on the parser's source, not on this page
        import nnc.cli

        self.env.note_dependency(nnc.cli.__file__)
        return result


def setup(app):
    app.add_directive("nnc-cli", CliReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
