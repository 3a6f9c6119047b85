"""``igdm-kit recipe check|show``: validate a recipe whole, or print it fully resolved."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, out_console

SET_HELP = "override a recipe key, e.g. --set train.epochs=5 (repeatable)"


def missing_files(r) -> list[str]:
    """What `run` will miss: the teachers' files, the dataset's files (the dataset plugin's ``check``)."""
    from igdm_kit.errors import DataError
    from igdm_kit.factories import create_dataset

    out = []
    t = r.model.teacher
    if t is not None and t.checkpoint is not None and not Path(t.checkpoint).exists():
        out.append(f"the teacher file {t.checkpoint} does not exist yet; `run` needs it")
    for role, section in sorted(r.model.teachers.items()):
        if section.checkpoint is not None and not Path(section.checkpoint).exists():
            out.append(f"the {role!r} teacher's file {section.checkpoint} does not exist yet; `run` needs it")
    try:
        create_dataset(r.model.data.name, r.components["data"]).check()
    except DataError as exc:
        out.append(f"{exc.message}; `run` needs it (hint: {exc.hint})" if exc.hint else exc.message)
    return out


def register(app: typer.Typer) -> None:
    group = typer.Typer(rich_markup_mode=None, help="Validate and inspect TOML recipes.", no_args_is_help=True)
    app.add_typer(group, name="recipe")

    @group.command("check")
    def check(recipe: Path = typer.Argument(..., help="recipe file (.toml)"),
              set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
        """Validate a recipe (schema, component names, component options) without running it."""
        from igdm_kit import _recipe as recipe_mod

        r = recipe_mod.load(recipe, set_)
        for warning in [*recipe_mod.missing_extras(r), *missing_files(r)]:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        out_console.print(f"[green]ok[/] {escape(str(recipe))} ({r.model.method.name}"
                          + (f" + {r.model.module.name}" if r.model.module else "") + ")", highlight=False)

    @group.command("show")
    def show(recipe: Path = typer.Argument(..., help="recipe file (.toml)"),
             set_: list[str] = typer.Option([], "--set", help=SET_HELP),
             json_: bool = typer.Option(False, "--json", help="print JSON instead of TOML")) -> None:
        """Print the fully resolved recipe (extends and overrides applied, defaults included); a value the
        dataset, the machine or a default decides is a comment saying where it comes from."""
        from igdm_kit import _recipe as recipe_mod
        from igdm_kit._recipe.effective import effective_defaults

        r = recipe_mod.load(recipe, set_)
        notes = effective_defaults(r)  # what the dataset, the machine or a default decides
        if json_:
            from igdm_kit._cli.console import print_json

            print_json("recipe show", {**r.resolved(), "effective_defaults": {
                table: {k: {"value": v, "from": why} for k, (v, why) in keys.items()}
                for table, keys in notes.items()}})
        else:
            typer.echo(recipe_mod.to_toml(r.resolved(), notes), nl=False)
        err_console.print(f"digest {r.digest()[:16]}", style="dim")
