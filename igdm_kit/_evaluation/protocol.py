"""A benchmark's evaluation protocol applied to ``igdm-kit eval``: the ``EvalProtocol`` a model's teacher loader
gives (``TeacherLoader.protocol``, e.g. RobustBench's ImageNet L∞ one: its 5,000 test images, its
preprocessing, ε = 4/255, AutoAttack standard). Every setting the user left unset becomes the protocol's and is
said; every one the user set otherwise is kept (an explicit choice wins) and warned of, because the number is
then not comparable with the leaderboard's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from igdm_kit._recipe.specs import eps_text
from igdm_kit.interfaces import EvalProtocol


@dataclass
class Followed:
    """What evaluating under ``protocol`` means for one command."""

    protocol: EvalProtocol
    radius: float | None  # None: under another threat, left to the command's default
    data_options: dict[str, Any]
    #: the settings the protocol supplied ("ε = 4/255", "test_list='robustbench'")
    supplied: list[str] = field(default_factory=list)
    #: the user's settings that depart from it
    departures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.protocol.name, "followed": not self.departures and self.protocol.caveat is None,
                "supplied": self.supplied, "departures": self.departures, "caveat": self.protocol.caveat}


def follow(protocol: EvalProtocol, *, threat: str, radius: float | None, data_options: dict[str, Any],
           limit: int | None, attack_keys: list[str] | None) -> Followed:
    """The radius and dataset options to evaluate with: the user's where given, else the protocol's. Under
    another threat than the protocol's its ε means nothing: an unset radius stays unset (the threat's default
    then applies), while its images and preprocessing, the model's own, are still supplied. ``attack_keys``
    None: the attacks are not judged (a shift table is no leaderboard number)."""
    same_threat = threat == protocol.threat
    out = Followed(protocol, protocol.eps if radius is None and same_threat else radius, dict(data_options))
    if not same_threat:
        out.departures.append(f"--threat {threat} (the protocol's is {protocol.threat})")
    elif radius is None:
        out.supplied.append(f"ε = {protocol.eps_text}")
    elif not math.isclose(radius, protocol.eps, rel_tol=1e-9, abs_tol=1e-12):
        out.departures.append(f"ε = {eps_text(radius)} (the protocol's is {protocol.eps_text})")
    for key, value in protocol.data_options.items():
        if key not in out.data_options:
            out.data_options[key] = value
            out.supplied.append(f"{key}={value!r}")
        elif out.data_options[key] != value:
            out.departures.append(f"--data-opt {key}={out.data_options[key]!r} (the protocol's is {value!r})")
    if limit is not None:
        out.departures.append(f"--limit {limit} (the protocol evaluates every one of its test images)")
    if attack_keys is not None and protocol.attack not in attack_keys:
        out.departures.append(f"the attacks leave out {protocol.attack}, the one its leaderboard reports")
    return out
