"""The typed evaluation report: what one evaluation of one model found, read by attribute everywhere (the final
evaluation, validation, trackers, shifts, sweeps, the CLI) and written as the JSON layout ``results.json`` and
``--json`` have always had::

    {"n": N, "eps": ε, "threat": "Linf", "seed": 0, "device": "cpu",
     "metrics": {"clean": {"accuracy": 97.5, "correct": 351, "total": 360, "ci95": [95.2, 98.7], "label": "Clean"}},
     "worst": {... the same ..., "over": ["clean", ...]}, "seconds": {...}, "warnings": [...], "details": {...}}

Accuracies are counts; the percentage and the Wilson interval are derived from them, never stored apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from igdm_kit._evaluation.stats import wilson

#: The key of the worst case per image over every attack run.
WORST = "worst"


@dataclass(frozen=True)
class Accuracy:
    """``correct`` of ``total`` images classified correctly (under an attack), with its label."""

    correct: int
    total: int
    label: str = ""

    @property
    def accuracy(self) -> float:
        """In percent."""
        return 100.0 * self.correct / self.total

    @property
    def ci95(self) -> tuple[float, float]:
        """The 95% Wilson interval, in percent."""
        return wilson(self.correct, self.total)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total, "ci95": list(self.ci95),
                "label": self.label}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Accuracy:
        return cls(int(d["correct"]), int(d["total"]), str(d.get("label", "")))


@dataclass
class EvalReport:
    """One model under each attack (``attacks``, by key), and the worst case per image over them (``worst``,
    over the attacks ``over`` names). ``flags`` holds the per-image robust flags (key → BoolTensor[N],
    ``worst`` included) when the evaluation kept them."""

    n: int
    eps: float
    threat: str
    seed: int | None
    device: str
    attacks: dict[str, Accuracy]
    worst: Accuracy
    over: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] | None = None
    #: per attack key (``worst`` included): (correct, total) of each class index — robust fairness
    per_class: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def worst_class(self, key: str) -> tuple[int, Accuracy] | None:
        """(class index, its accuracy) of the class with the lowest accuracy under ``key`` among the classes
        the images hold (the lowest index on a tie); None without per-class counts."""
        counts = [(c / t, i, c, t) for i, (c, t) in enumerate(self.per_class.get(key, [])) if t]
        if not counts:
            return None
        _, i, c, t = min(counts)
        return i, Accuracy(c, t, f"class {i}")

    def rows(self) -> dict[str, Accuracy]:
        """Every attack's accuracy, then the worst case (``worst``): what a table or a tracker shows."""
        return {**self.attacks, WORST: self.worst}

    def to_json(self, flags: bool = False) -> dict[str, Any]:
        out = {"n": self.n, "eps": self.eps, "threat": self.threat, "seed": self.seed, "device": self.device,
               "metrics": {k: a.to_json() for k, a in self.attacks.items()},
               "worst": {**self.worst.to_json(), "over": list(self.over)},
               "seconds": dict(self.seconds), "warnings": list(self.warnings), "details": dict(self.details)}
        if self.per_class:
            out["per_class"] = {k: {"correct": [c for c, _ in v], "total": [t for _, t in v]}
                                for k, v in self.per_class.items()}
            out["worst_class"] = {}
            for k in self.per_class:
                found = self.worst_class(k)
                if found is not None:
                    out["worst_class"][k] = {"class": found[0], **found[1].to_json()}
        if flags and self.flags is not None:
            out["flags"] = self.flags
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalReport:
        """A report from its JSON (``results.json``'s top level, one of its ``checkpoints``, ``--json``)."""
        attacks = {k: Accuracy.from_json(m) for k, m in (d.get("metrics") or {}).items()}
        worst = d.get(WORST)
        n = int(d.get("n") or next((a.total for a in attacks.values()), 0))
        return cls(n=n, eps=d.get("eps"), threat=d.get("threat", "Linf"), seed=d.get("seed"),
                   device=str(d.get("device", "")), attacks=attacks,
                   worst=Accuracy.from_json(worst) if worst else Accuracy(0, max(n, 1), "worst case"),
                   over=list((worst or {}).get("over", attacks)), seconds=dict(d.get("seconds") or {}),
                   warnings=list(d.get("warnings") or []), details=dict(d.get("details") or {}),
                   per_class={k: list(zip(map(int, v["correct"]), map(int, v["total"]), strict=True))
                              for k, v in (d.get("per_class") or {}).items()})

    def with_counts(self, counts: dict[str, int], total: int,
                    per_class: dict[str, list[tuple[int, int]]] | None = None) -> EvalReport:
        """The same attacks with other counts over ``total`` images (the ranks' shards added up, and their
        per-class counts when given); the per-attack details and flags of one shard are dropped (they are not
        the whole test split's)."""
        return replace(self, n=total, attacks={k: replace(a, correct=int(counts[k]), total=total)
                                               for k, a in self.attacks.items()},
                       worst=replace(self.worst, correct=int(counts[WORST]), total=total), details={}, flags=None,
                       per_class=per_class if per_class is not None else {})
