"""Options: the nested pydantic model every component declares, and the option types recipes use
(fractions such as ``"8/255"``, paths resolved against the recipe file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


def parse_fraction(value: Any) -> Any:
    """Let recipes write radii as in papers: ``eps = "8/255"`` means 8/255."""
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return value  # pydantic then reports "not a valid number" with the key's path
    return value


#: A float that may be written as a fraction string in a recipe ("8/255").
Fraction = Annotated[float, BeforeValidator(parse_fraction)]


class RecipePath:
    """Marks an option as a file or folder path (``PathOption``). Written in a recipe file, a relative path is
    relative to that file, and the component receives it absolute; given with ``--set`` on the command line,
    relative to the working directory; a default stays as the component wrote it (working directory).
    Only its last part counts towards a recipe's digest, so a moved clone keeps its runs. ``keywords``: values
    that name something other than a file (``"robustbench"``), passed as they are."""

    def __init__(self, keywords: tuple[str, ...] = ()) -> None:
        self.keywords = tuple(keywords)

    def __repr__(self) -> str:
        return f"RecipePath(keywords={self.keywords!r})" if self.keywords else "RecipePath()"


#: A ``str`` option that holds a path (resolved as ``RecipePath`` says).
PathOption = Annotated[str, RecipePath()]


class AddedLater:
    """Marks an option added to a component after recipes using it were written (``Annotated[T,
    AddedLater()]``): while it holds its default it is left out of a recipe's digest, so the finished runs of
    those recipes keep their digest (reused, resumed, found by sweeps) instead of being taken for others."""

    def __repr__(self) -> str:
        return "AddedLater()"


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, values are validated on assignment, and
    no number may be ``inf`` or ``nan``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    def effective_defaults(self) -> dict[str, tuple[Any, str]]:
        """Option → (the value it runs with, where that comes from) for each option left unset (``None``)
        that the component decides itself: ``recipe show`` prints them (``# layout = "trades" (the default
        for activation relu)``), so a default that changes results is seen. Default: none."""
        return {}


class NoOptions(Options):
    """For components that take no options."""
