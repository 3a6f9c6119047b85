"""``igdm-kit plugins list|show``: every registered component, and one component's description and options."""

from __future__ import annotations

import typer
from rich.markup import escape

from igdm_kit._cli.console import out_console, print_json
from igdm_kit._plugins.kinds import BY_NAME, NAMES

#: the widest table ``plugins list`` prints (descriptions wrap inside it)
LIST_WIDTH = 100


def _plugin(entry) -> str:
    """"built-in" for the toolkit's own plugins, else the entry point's name."""
    from igdm_kit._plugins.manager import DEFAULT_PLUGINS

    return "built-in" if entry.plugin in DEFAULT_PLUGINS else entry.plugin


def register(app: typer.Typer) -> None:
    group = typer.Typer(rich_markup_mode=None, help="Inspect installed plugins and their components.",
                        no_args_is_help=True)
    app.add_typer(group, name="plugins")

    @group.command("list")
    def list_(json_: bool = typer.Option(False, "--json", help="print a JSON list on stdout")) -> None:
        """List every registered component (kind, name, plugin, description)."""
        from rich.table import Table

        from igdm_kit._plugins.manager import all_entries, load_errors

        entries = all_entries()
        if json_:
            rows = [{"kind": e.kind, "name": e.name, "plugin": e.plugin} for e in entries]
            import json
            import sys

            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = Table(title="igdm-kit components", width=min(LIST_WIDTH, out_console.width))
        for col, ratio in (("kind", None), ("name", None), ("plugin", None), ("description", 1)):
            table.add_column(col, ratio=ratio, no_wrap=ratio is None)
        for e in entries:
            table.add_row(e.kind, e.name, escape(_plugin(e)), escape(e.description))
        out_console.print(table)
        out_console.print("A component's options: igdm-kit plugins show NAME", style="dim", highlight=False)
        for err in load_errors():
            out_console.print(f"[red]failed:[/] {escape(str(err))}")

    @group.command("show")
    def show(name: str = typer.Argument(..., help="component name, e.g. ard or igdm"),
             kind: str | None = typer.Option(None, "--kind", "-k", help=f"{', '.join(NAMES)} (when a name has "
                                             "several kinds)"),
             json_: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
        """A component's description, contract facts and options (name, type, default, description)."""
        from igdm_kit._plugins.describe import option_rows
        from igdm_kit._plugins.manager import all_entries
        from igdm_kit.errors import IgdmKitError

        if kind is not None and kind not in BY_NAME:
            raise IgdmKitError(f"unknown kind {kind!r}", "kinds: " + ", ".join(NAMES))
        entries = [e for e in all_entries() if e.name == name and kind in (None, e.kind)]
        if not entries:
            import difflib

            names = sorted({e.name for e in all_entries()})
            close = difflib.get_close_matches(name, names, n=3)
            raise IgdmKitError(f"no component named {name!r}" + (f" of kind {kind}" if kind else ""),
                               ("did you mean " + ", ".join(repr(c) for c in close) + "?") if close
                               else "see `igdm-kit plugins list`")
        if json_:
            print_json("plugins show", [{"kind": e.kind, "name": e.name, "plugin": e.plugin,
                                         "description": e.description, "facts": dict(BY_NAME[e.kind].facts(e.component)),
                                         "options": option_rows(e.options_model)} for e in entries])
            return
        for e in entries:
            _print_entry(e, option_rows(e.options_model))


def _print_entry(e, rows: list[dict[str, str]]) -> None:
    from rich.table import Table

    kind = BY_NAME[e.kind]
    named = f'["{e.name}", ...]' if kind.many else f'"{e.name}"'  # a list of attacks, trackers, ...
    where = kind.named_in if kind.named_in.startswith("[") else f"{kind.named_in} {e.name}"
    usage = "always on" if dict(kind.facts(e.component)).get("always on") == "yes" else \
        f"in a recipe: {where}" + (f" = {named}" if kind.named_in.startswith("[") else "")
    out_console.print(f"[bold]{e.kind} {escape(e.name)}[/] ({escape(_plugin(e))}; {escape(usage)})",
                      highlight=False)
    if e.description:
        out_console.print(escape(e.description), highlight=False)
    for fact, value in kind.facts(e.component):
        out_console.print(f"  {fact}: {value}", highlight=False)
    if not rows:
        out_console.print("  no options", style="dim")
        return
    table = Table(width=min(LIST_WIDTH, out_console.width), show_edge=False)
    for col, ratio in (("option", None), ("type", 2), ("default", None), ("description", 3)):
        table.add_column(col, ratio=ratio, no_wrap=col == "option")
    for r in rows:
        table.add_row(escape(r["name"]), escape(r["type"]), escape(r["default"]), escape(r["description"]))
    out_console.print(table)
