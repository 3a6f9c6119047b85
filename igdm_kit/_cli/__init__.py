"""The ``igdm-kit`` command line.

One module per command group registers its commands on the Typer ``app``; plugins add theirs through the
``register_commands(app)`` hook (a plugin that fails there is a warning naming it). Errors are mapped to
``error: message`` + ``hint`` and exit code 1 here, in ``main`` alone — failures of the operating system
(disk full, permission, read-only) included; set ``IGDM_KIT_DEBUG=1`` for the traceback. Results go to
stdout, progress and diagnostics to stderr. Nothing here imports torch: the commands import it when they run.
"""

from __future__ import annotations

import os
import sys

import typer

from igdm_kit._cli import analyze as analyze_cmd
from igdm_kit._cli import compare as compare_cmd
from igdm_kit._cli import eval as eval_cmd
from igdm_kit._cli import plugins as plugins_cmd
from igdm_kit._cli import recipe as recipe_cmd
from igdm_kit._cli import report as report_cmd
from igdm_kit._cli import run as run_cmd
from igdm_kit._cli import sweep as sweep_cmd
from igdm_kit._cli.console import err_console
from igdm_kit._runtime.threads import ENV as THREADS_ENV
from igdm_kit._runtime.threads import MAX_THREADS
from igdm_kit._runtime.threads import prepare_environment
from igdm_kit.errors import IgdmKitError

GROUPS = (run_cmd, recipe_cmd, plugins_cmd, sweep_cmd, eval_cmd, compare_cmd, analyze_cmd, report_cmd)


def build_app() -> typer.Typer:
    app = typer.Typer(name="igdm-kit", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                      pretty_exceptions_enable=False,
                      help="Robust small classifiers by adversarial distillation, with IGDM.")

    def version(value: bool) -> None:
        if value:
            from igdm_kit import __version__

            typer.echo(f"igdm-kit {__version__}")
            raise typer.Exit()

    @app.callback()
    def _root(_version: bool = typer.Option(False, "--version", callback=version, is_eager=True,
                                            help="print the version and exit"),
              threads: int | None = typer.Option(
                  None, "--threads", min=1, max=MAX_THREADS, metavar="N", envvar=THREADS_ENV, show_envvar=True,
                  help="CPU threads of torch for every command (default: the recipe's train.threads, else "
                       "the physical cores available)")) -> None:
        """Robust small classifiers by adversarial distillation, with IGDM."""
        if threads is not None:  # igdm_kit._runtime.threads.resolve reads it from there, in every command
            os.environ[THREADS_ENV] = str(threads)

    for group in GROUPS:
        group.register(app)
    from igdm_kit._plugins.manager import register_commands

    register_commands(app)  # a plugin that fails is a warning naming it; the rest of the CLI works
    return app


def _debug() -> bool:
    return os.environ.get("IGDM_KIT_DEBUG", "") not in ("", "0")


def report(exc: IgdmKitError) -> None:
    from rich.markup import escape  # paths and hints may hold brackets ("runs/[exp]", "igdm-kit[plot]")

    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def _one_line(exc: BaseException) -> IgdmKitError | None:
    """The one-line error for what a command raised, or None for a bug (which keeps its traceback):
    a failure of the operating system names the file and the fix."""
    from igdm_kit.errors import storage_error

    if isinstance(exc, IgdmKitError):
        return exc
    if isinstance(exc, OSError):
        return storage_error(exc, doing="read or write")
    if isinstance(exc, RecursionError):
        return IgdmKitError("input nested too deeply to read", "flatten the nested tables or lists")
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors are Typer's own (message, exit 2); ``IgdmKitError`` → one line, exit 1
    (``Interrupted``: 128 + signal; a second Ctrl-C too); an OS failure and runaway nesting are one line too."""
    from igdm_kit._runtime.signals import StopNow

    prepare_environment()  # before torch loads: OpenMP threads sleep, not spin, while they wait
    saved = os.environ.get(THREADS_ENV)  # --threads lasts for this call only (tests call main in-process)
    try:
        app = build_app()
        app(args=argv, prog_name="igdm-kit")  # standalone: exits with the command's code
    except StopNow as exc:  # a second Ctrl-C: one line, never click's "Aborted!" nor a traceback
        if _debug():
            raise
        report(exc.error())
        sys.exit(exc.error().exit_code)
    except Exception as exc:
        error = _one_line(exc)
        if error is None or _debug():
            raise
        report(error)
        sys.exit(error.exit_code)
    finally:
        if saved is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = saved
