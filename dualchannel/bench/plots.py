"""Plots for the benchmark page, drawn from ``benchmarks.json`` with matplotlib.

Two pictures read better than their tables: ingest latency against offered rate (where
each server stops keeping up shows as a knee) and the spread of failover detection times
against the one-second bound. Each is a PNG beside ``benchmarks.md``; the page links the
ones that exist. matplotlib comes with the ``bench`` extra (``pip install
'dualchannel[bench]'``); without it the page is written without plots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "plot_available", "write_plots"]

#: The file each suite's plot is written to, beside ``benchmarks.md``.
PLOTS = {"ingest": "benchmarks-ingest.png", "failover": "benchmarks-failover.png"}

_SHAPES = ("single", "batch20")
_SHAPE_TITLES = {"single": "one message per POST", "batch20": "batches of 20"}
_COLOURS = {"relay": "tab:blue", "naive": "tab:orange", "centrifugo": "tab:purple"}


def plot_available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw every plot whose suite is in ``results``; the files written, by suite."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    drawers: dict[str, Callable[[dict[str, Any], Path], bool]] = {
        "ingest": _ingest,
        "failover": _failover,
    }
    written: dict[str, Path] = {}
    for suite, draw in drawers.items():
        path = out_dir / PLOTS[suite]
        if suite in results and draw(results, path):
            written[suite] = path
    return written


def _series(points: dict[str, Any], server: str, shape: str) -> list[tuple[int, float, bool]]:
    """``(offered, p99 ms, kept up)`` per offered rate for one server and request shape."""
    rows = []
    for key, point in points.items():
        name, kind, rate = key.split("/")
        if (name, kind) != (server, shape):
            continue
        median = point.get("median", point)
        kept_up = median["achieved_msg_s"] >= 0.98 * int(rate) and median["success_rate"] >= 1.0
        rows.append((int(rate), float(median["p99_ms"]), kept_up))
    return sorted(rows)


def _ingest(results: dict[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    ingest = results["ingest"]
    peers: list[tuple[str, dict[str, Any], str]] = [
        ("relay", ingest["points"], "dualchannel relay"),
        ("naive", ingest["points"], "naive relay (commit per request)"),
    ]
    if "centrifugo" in results:
        version = results["centrifugo"].get("version", "")
        peers.append(("centrifugo", results["centrifugo"]["ingest"], f"Centrifugo {version}"))
    target = float(ingest["targets"]["p99_ms"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, shape in zip(axes, _SHAPES, strict=True):
        for server, points, label in peers:
            rows = _series(points, server, shape)
            if not rows:
                continue
            rates = [r for r, _, _ in rows]
            colour = _COLOURS[server]
            ax.plot(rates, [p for _, p, _ in rows], marker="o", color=colour, label=label)
            lagging = [(r, p) for r, p, kept in rows if not kept]
            if lagging:  # hollow markers: the server did not keep up with this rate
                ax.plot(
                    [r for r, _ in lagging],
                    [p for _, p in lagging],
                    linestyle="none",
                    marker="o",
                    markersize=11,
                    markerfacecolor="none",
                    markeredgecolor=colour,
                )
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.text(1000, target * 1.15, f"target p99 {target:g} ms", color="grey", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1000, 2000, 5000, 10000], ["1k", "2k", "5k", "10k"])
        ax.set_xlabel("offered messages/s")
        ax.set_title(_SHAPE_TITLES[shape])
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("p99 latency, ms (log)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle("Relay ingest, durable commits (median of runs; hollow ring = fell behind)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _failover(results: dict[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    failover = results["failover"]
    settings = [
        (name, s["cuts"]["detection_all_ms"])
        for name, s in failover["settings"].items()
        if s.get("cuts", {}).get("detection_all_ms")
    ]
    if not settings:
        return False
    targets = failover["targets"]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.8 * len(settings)))
    for row, (_name, times) in enumerate(settings):
        # A light jitter on the row so equal times stay visible as separate cuts.
        offsets = [((i * 37) % 21 - 10) / 60 for i in range(len(times))]
        ax.scatter(times, [row + o for o in offsets], s=14, alpha=0.7)
    ax.axvline(targets["detect_p99_ms"], color="orange", linestyle="--", linewidth=1)
    ax.axvline(targets["detect_max_ms"], color="red", linestyle="--", linewidth=1)
    ax.text(targets["detect_p99_ms"], len(settings) - 0.45, " p99 target", fontsize=8)
    ax.text(targets["detect_max_ms"], len(settings) - 0.45, " max target", fontsize=8)
    ax.set_yticks(range(len(settings)), [name for name, _ in settings])
    ax.set_ylim(-0.6, len(settings) - 0.2)
    ax.set_xlim(0, max(targets["detect_max_ms"] * 1.1, *(max(t) for _, t in settings)))
    ax.set_xlabel("primary cut to channel switch, ms (one dot per cut)")
    ax.set_title("Failover detection with a real livekit-server paused")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
