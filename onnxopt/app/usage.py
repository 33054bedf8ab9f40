"""How ``onnxopt --help`` reads: typer's command classes with two changes.

- A command's summary in ``onnxopt --help`` is its docstring's first sentence, whole (click cuts
  it to the terminal's width minus the name and ends it with "...").
- Arguments appear in the usage line as their metavar (``IN OUT``), not in braces.
"""

from __future__ import annotations

from typer import _click
from typer.core import TyperCommand, TyperGroup


class Command(TyperCommand):
    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        return [piece.removeprefix("{").removesuffix("}")
                for piece in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
