"""What every figure is drawn with: matplotlib behind one guard (the ``plot`` extra), atomic writes,
histograms that choose log bins where a distribution spans decades, legends under the axes."""

from __future__ import annotations

from pathlib import Path

from igdm_kit.errors import IgdmKitError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise IgdmKitError("--plot needs matplotlib, which is not installed",
                           "pip install matplotlib (igdm-kit's 'plot' extra)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the extension) and close it."""
    from igdm_kit._storage.io import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
    except (OSError, ValueError) as exc:
        raise IgdmKitError(f"cannot write the plot {str(path)!r}: {exc}",
                           "check the folder and the extension (.png, .pdf, .svg)") from None
    finally:
        pyplot().close(fig)
    return path


def log_bins(values) -> bool:
    """Whether a histogram needs logarithmic bins: positive values whose middle 98 % span two decades, or
    that span one and pile up in 40 linear bins (the fullest bin holding 40 % of the samples or more)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size < 2 or v.min() <= 0 or v.max() / v.min() < 10:
        return False
    lo, hi = np.quantile(v, [0.01, 0.99])
    counts, _ = np.histogram(v, bins=40)
    return hi / lo >= 100 or counts.max() >= 0.4 * v.size


def histogram(ax, values, *, log: bool | None = None, bins=None, **kwargs) -> None:
    """A histogram that also copes with (nearly) constant values, e.g. GC = 1 for a model with itself; on
    logarithmic bins (and a log x-axis) when ``log_bins`` says the data need them."""
    import numpy as np

    v = values.double().numpy() if hasattr(values, "double") else np.asarray(values, dtype=float)
    spread = float(v.max() - v.min()) if v.size else 0.0
    if bins is None:
        log = log_bins(v) if log is None else log
        bins = np.geomspace(v.min(), v.max(), 41) if log else \
            (40 if spread > 1e-9 * max(1.0, float(abs(v).max())) else 1)
    ax.hist(v, bins=bins, **kwargs)
    if log:
        ax.set_xscale("log")


def legend_below(ax, ncol: int = 2) -> None:
    """A legend under the axes, where it covers no data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=ncol, frameon=False, fontsize=8)
