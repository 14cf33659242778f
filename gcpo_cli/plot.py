"""`gcpo inspect --plot`: a problem's or a run's curves as a chart file, with matplotlib."""

from __future__ import annotations

from pathlib import Path

from . import render
from .errors import GcpoError


def plot(kind: str, data: dict, path: Path) -> None:
    """Draw `data` (a problem or run history from store.history) into `path`; the format is the
    file's suffix. Written beside and renamed, so a failure never leaves half a file."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        # Both install lines, on one 80-column line: the extra, or matplotlib alone.
        raise GcpoError(
            "no matplotlib: pip install 'gcpo-cli[plot]' or pip install matplotlib") from None
    if kind == "problem":
        fig = _plot_problem(plt, data)
    else:
        fig = _plot_run(plt, data)
    fmt = path.suffix.lstrip(".").lower() or "png"
    # Write beside the target, then rename, so a failure never leaves half a file behind.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")
        tmp.replace(path)
    except (ValueError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise GcpoError(f"cannot write {path}: {e}") from None
    finally:
        plt.close(fig)


def _whole_steps(ax) -> None:
    """Ticks on whole steps only. MaxNLocator keeps to integers only where it finds two of them
    in view (min_n_ticks): around a single step it fell back to 2.85 ... 3.15."""
    ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)


def _plot_problem(plt, h: dict):
    runs = h["runs"] or [None]
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), squeeze=False, layout="constrained")
    for ax, r in zip(axes[:, 0], runs):
        if r is None:
            ax.text(0.5, 0.5, "never sampled in training", ha="center", va="center")
            ax.set_axis_off()
            continue
        st = [s["step"] for s in r["steps"]]
        share = [s["k"] / s["n"] if s["n"] else 0 for s in r["steps"]]
        ax.plot(st, share, marker=".", lw=1, label="share correct (k/G, golden not counted)")
        gold = [s["step"] for s in r["steps"] if s["golden"]]
        if gold:
            ax.scatter(gold, [0] * len(gold), marker="*", s=60, color="goldenrod", label="golden injected",
                       zorder=3)
        if r["graduated_step"] is not None:
            ax.axvline(r["graduated_step"], ls="--", color="green",
                       label=f"graduated (step {r['graduated_step']})")
        if r["regressed_steps"]:
            ax.scatter(r["regressed_steps"], [0] * len(r["regressed_steps"]), marker="x", color="red",
                       label="regressed", zorder=4)
        ax.set_ylim(-0.08, 1.05)
        _whole_steps(ax)
        ax.set_ylabel("k / G")
        ax.set_title(f"run {r['run_id']} ({r['algorithm'] or '-'})", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"problem {h['problem']['id']}: {render.one_line(h['problem']['text'], 70)}", fontsize=10)
    return fig


def _plot_run(plt, h: dict):
    curves = render.RUN_CURVES
    fig, axes = plt.subplots(len(curves), 1, figsize=(9, 1.9 * len(curves)), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, (key, name) in zip(axes[:, 0], curves):
        pts = [(s["step"], v) for s in h["steps"] if (v := s.get(key)) is not None]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(name, fontsize=8)
    _whole_steps(axes[-1, 0])
    axes[-1, 0].set_xlabel("step")
    r = h["run"]
    fig.suptitle(f"run {r['id']} ({r['algorithm'] or '-'}, {r['model'] or '-'})", fontsize=10)
    return fig
