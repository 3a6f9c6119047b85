"""``igdm-kit plugins list``: every registered component, with the plugin that provides it."""

from __future__ import annotations

import typer

from .console import out_console


def register(app: typer.Typer) -> None:
    group = typer.Typer(rich_markup_mode=None, help="Inspect installed plugins and their components.", no_args_is_help=True)
    app.add_typer(group, name="plugins")

    @group.command("list")
    def list_(json_: bool = typer.Option(False, "--json", help="print a JSON list on stdout")) -> None:
        """List every registered component (kind, name, plugin)."""
        from rich.table import Table

        from ..plugins import all_entries, load_errors

        entries = all_entries()
        if json_:
            rows = [{"kind": e.kind, "name": e.name, "plugin": e.plugin} for e in entries]
            import json
            import sys

            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = Table(title="igdm-kit components")
        for col in ("kind", "name", "plugin", "description"):
            table.add_column(col)
        for e in entries:
            table.add_row(e.kind, e.name, e.plugin, e.description)
        out_console.print(table)
        for err in load_errors():
            out_console.print(f"[red]failed:[/] {err}")
