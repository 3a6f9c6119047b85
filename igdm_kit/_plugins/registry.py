"""One generic registry for every component kind (``igdm_kit._plugins.kinds``).

Names are unique per kind: a second plugin registering a taken name is an error that names both plugins.
Looking up an unknown name is an error that lists the closest registered names (like timm's
``create_model``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from igdm_kit import interfaces
from igdm_kit._plugins.kinds import BY_NAME
from igdm_kit._plugins.kinds import NAMES as KINDS
from igdm_kit.errors import PluginError, UnknownComponentError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    component: Any
    plugin: str

    @property
    def options_model(self) -> type[BaseModel]:
        return self.component.Options

    @property
    def description(self) -> str:
        text = getattr(self.component, "description", "") or (self.component.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


class Registry:
    """Components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, component: Any, plugin: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(
                f"plugin {plugin!r} registered the {self.kind} name {name!r}",
                "names are lower-case letters, digits, '-', '_' and '.'",
            )
        options = getattr(component, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise PluginError(
                f"plugin {plugin!r} registered {self.kind} {name!r} without an Options pydantic model",
                "give the component a nested `Options` class (igdm_kit.interfaces.Options)",
            )
        contract = getattr(interfaces, BY_NAME[self.kind].contract)  # a contract by its recorded name
        structural = Protocol in contract.__mro__  # a typing.Protocol: any class with its members
        if not structural and not (isinstance(component, type) and issubclass(component, contract)):
            raise PluginError(
                f"plugin {plugin!r} registered {self.kind} {name!r}, which is not an "
                f"igdm_kit.interfaces.{contract.__name__}",
                f"derive the class from igdm_kit.interfaces.{contract.__name__} (its defaults are part of the "
                "contract)",
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered by both plugin {other!r} and plugin {plugin!r}",
                "uninstall one of them or disable it with IGDM_KIT_LOAD_PLUGINS",
            )
        self._entries[name] = Entry(self.kind, name, component, plugin)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self._entries) from None

    def get(self, name: str) -> Any:
        return self.entry(name).component

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
