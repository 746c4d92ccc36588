"""Report charts, rendered to PNG with matplotlib's Agg canvas (no pyplot, no global backend
change) in seaborn's style: distribution vs target, intersectional heatmap, fairness/quality
trade-off. Every label that may come from a user is passed through `plain()` so that
matplotlib never interprets it as mathtext."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 96
PALETTE = sns.color_palette("colorblind")
# Okabe & Ito's colour-blind-safe set. The built-in methods keep one colour each in every chart
# and HTML swatch of every report; other method names take the remaining colours in name order.
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "bluish green": "#009E73", "reddish purple": "#CC79A7",
             "vermillion": "#D55E00", "sky blue": "#56B4E9", "yellow": "#F0E442", "black": "#000000"}
# Chosen so that no two built-ins are a near pair of the set (orange/vermillion, blue/sky blue).
METHOD_COLOURS = {"none": OKABE_ITO["black"], "prompt": OKABE_ITO["orange"],
                  "sample_guidance": OKABE_ITO["bluish green"], "universal_guidance": OKABE_ITO["reddish purple"],
                  "distribution_guidance": OKABE_ITO["blue"]}
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]


def plain(label, limit: int = 40) -> str:
    """User text as a literal matplotlib label: '$' escaped (no mathtext), shortened."""
    s = "—" if label is None else str(label)
    s = " ".join(s.split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def method_colours(methods) -> dict[str, str]:
    """Method name -> hex colour, in legend order: the built-in methods first with their fixed
    Okabe-Ito colours, then any other name in sorted order with the unused Okabe-Ito colours
    (cycling past three)."""
    names = {str(m) for m in methods}
    out = {name: c for name, c in METHOD_COLOURS.items() if name in names}
    spare = [c for c in OKABE_ITO.values() if c not in METHOD_COLOURS.values()]
    for i, name in enumerate(sorted(names - set(METHOD_COLOURS))):
        out[name] = spare[i % len(spare)]
    return out


def _style():
    return mpl.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.8),
                           "axes.prop_cycle": mpl.cycler(color=PALETTE)})


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _value(x) -> float:
    return float("nan") if x is None else float(x)


def distribution_chart(path: Path, classes: list[str], target: list[float] | None,
                       series: list[tuple[str, list, list | None]]) -> Path:
    """Grouped bars of p_hat per class (one colour per labeler) with 95% error bars from the
    per-class intervals, and the target as black markers.
    series: [(labeler, p_hat, [[lo, hi], ...] or None)]"""
    k = len(classes)
    with _style():
        width_in = max(3.6, 1.0 + 0.9 * k * max(1, len(series)) ** 0.5)
        fig = Figure(figsize=(width_in, 2.9))
        # fixed margins: constrained layout would cost a second draw per chart
        fig.subplots_adjust(left=0.62 / width_in, right=1 - 0.12 / width_in, top=0.95, bottom=0.32 if k > 4 else 0.13)
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(series))
        x = np.arange(k)
        for i, (name, p_hat, intervals) in enumerate(series):
            p = np.array([_value(v) for v in (p_hat or [None] * k)], dtype=float)
            offset = (i - (len(series) - 1) / 2) * width
            yerr = None
            if intervals and len(intervals) == k:
                lo = np.array([_value(iv[0]) if iv else np.nan for iv in intervals])
                hi = np.array([_value(iv[1]) if iv else np.nan for iv in intervals])
                yerr = np.vstack([np.clip(p - lo, 0, None), np.clip(hi - p, 0, None)])
                yerr = np.nan_to_num(yerr)
            ax.bar(x + offset, np.nan_to_num(p), width * 0.92, yerr=yerr, capsize=3,
                   color=PALETTE[i % len(PALETTE)], label=plain(name, 28), error_kw={"elinewidth": 1})
        if target and len(target) == k:
            ax.scatter(x, [_value(t) for t in target], marker="_", s=900 * 0.8 / max(1, k) ** 0.3, color="black",
                       linewidths=2.2, zorder=5, label="target")
        ax.set_xticks(x, [plain(c, 18) for c in classes], rotation=30 if k > 4 else 0,
                      ha="right" if k > 4 else "center")
        ax.set_ylim(0, 1)
        ax.set_ylabel("proportion")
        ax.legend(fontsize=7, loc="upper right", frameon=True)
        return _save(fig, path)


def heatmap(path: Path, attributes: list[str], class_lists: list[list[str]], p_hat: list, target: list | None,
            small: list[str] | None = None) -> Path:
    """Joint distribution as a heatmap: first attribute on the rows, the product of the others on
    the columns; each cell annotated with observed / target, small cells marked with '!'."""
    rows = class_lists[0]
    cols = ["&".join(c) for c in _product(class_lists[1:])]
    p = np.array([_value(v) for v in p_hat], dtype=float).reshape(len(rows), len(cols))
    t = None if not target else np.array([_value(v) for v in target], dtype=float).reshape(len(rows), len(cols))
    small = set(small or [])
    notes = np.empty(p.shape, dtype=object)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            note = "—" if math.isnan(p[i, j]) else f"{p[i, j]:.2f}"
            if t is not None and not math.isnan(t[i, j]):
                note += f"\n(target {t[i, j]:.2f})"
            if f"{r}&{c}" in small:
                note += " !"
            notes[i, j] = note
    with _style():
        width_in, height_in = 2.2 + 1.25 * len(cols), 1.1 + 0.75 * len(rows)
        fig = Figure(figsize=(width_in, height_in))
        fig.subplots_adjust(left=1.0 / width_in, right=1 - 0.25 / width_in, top=1 - 0.12 / height_in,
                            bottom=0.62 / height_in)
        ax = fig.add_subplot()
        sns.heatmap(p, ax=ax, annot=notes, fmt="", vmin=0, vmax=max(0.5, float(np.nanmax(p)) if p.size else 1),
                    cmap="mako_r", cbar_kws={"label": "observed"}, linewidths=0.5,
                    xticklabels=[plain(c, 24) for c in cols], yticklabels=[plain(r, 16) for r in rows],
                    annot_kws={"fontsize": 7})
        ax.set_xlabel(plain(" x ".join(attributes[1:]), 60))
        ax.set_ylabel(plain(attributes[0], 30))
        ax.tick_params(axis="y", rotation=0)
        return _save(fig, path)


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for classes in lists:
        out = [(*prefix, c) for prefix in out for c in classes]
    return out


def tradeoff_chart(path: Path, panels: list[dict]) -> Path:
    """FD (with its interval) against FID, one panel per attribute setting, colour per method
    (`method_colours` of the point's `base`, the method's name, so a scale sweep keeps one colour),
    marker per model; scale sweeps of one method drawn as lines in scale order. A point is drawn
    at its `quality`: the FID the caller chose to judge by (against the target's reference or the suite's).
    panels: [{title, xlabel, points: [{method, base, model, fd, fd_lo, fd_hi, fid, quality}],
              curves: [[point, ...]]}]"""
    def base(p):
        return str(p.get("base") or p["method"])

    colour = method_colours(base(p) for panel in panels for p in panel["points"])
    methods = list(colour)
    models = sorted({p["model"] for panel in panels for p in panel["points"]}, key=str)
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    n = max(1, len(panels))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    with _style():
        fig = Figure(figsize=(3.4 * ncols + 1.8, 2.9 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        for ax, panel in zip(axes.ravel(), panels, strict=False):
            has_fid = False
            for curve in panel.get("curves", []):
                xs = [_value(p["quality"]) for p in curve]
                ys = [_value(p["fd"]) for p in curve]
                ax.plot(xs, ys, "--", color="0.45", alpha=0.8, linewidth=1.0, zorder=2)
                for p in curve:
                    if p.get("scale") is not None and p["quality"] is not None and p["fd"] is not None:
                        ax.annotate(f"s={p['scale']:g}", (p["quality"], p["fd"]), textcoords="offset points",
                                    xytext=(4, 3), fontsize=6, color="0.3")
            for p in panel["points"]:
                if p["fd"] is None or p["quality"] is None:
                    continue
                has_fid = True
                lo, hi = _value(p.get("fd_lo")), _value(p.get("fd_hi"))
                yerr = None
                if not (math.isnan(lo) or math.isnan(hi)):
                    yerr = [[max(0.0, p["fd"] - lo)], [max(0.0, hi - p["fd"])]]
                ax.errorbar([p["quality"]], [p["fd"]], yerr=yerr, fmt=marker[p["model"]], color=colour[base(p)],
                            markersize=6, capsize=2, elinewidth=0.8, zorder=3)
            if not has_fid:
                ax.text(0.5, 0.5, "no FID measured", ha="center", va="center", transform=ax.transAxes,
                        color="0.4")
            ax.set_title(plain(panel["title"], 50), fontsize=9)
            ax.set_xlabel(plain(panel.get("xlabel") or "FID (lower is better)", 50))
            ax.set_ylabel("FD (lower is better)")
            ax.set_ylim(bottom=0)
        handles = [Line2D([], [], color=colour[m], marker="o", linestyle="", label=plain(m, 28))
                   for m in methods]
        handles += [Line2D([], [], color="0.3", marker=marker[m], linestyle="", label=plain(m, 28))
                    for m in models]
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, title="method / model",
                   title_fontsize=7)
        return _save(fig, path)


PROMPT_COLOURS = {"differs": OKABE_ITO["vermillion"], "within": OKABE_ITO["bluish green"], "neither": "0.35"}


def prompt_chart(path: Path, title: str, prompts: list[str], classes: list[str], shares: list[list[tuple]],
                 target: list[float | None], tolerance: float, status: list[str]) -> Path:
    """Each prompt's share of each class (one panel per class, at most four) with its 95% interval,
    against the target (dashed) and the ±tolerance band (shaded); a point's colour says whether the
    prompt differs from the target or is within tolerance after Holm's correction across prompts.
    shares[i][c] = (p, lo, hi) of prompt i, class c; status[i] in PROMPT_COLOURS."""
    k = min(4, len(classes))
    m = len(prompts)
    y = np.arange(m)[::-1]
    with _style():
        fig = Figure(figsize=(3.4 + 3.0 * k, 1.1 + 0.26 * m), layout="constrained")
        axes = fig.subplots(1, k, squeeze=False, sharey=True)[0]
        for c, ax in enumerate(axes):
            t = target[c] if c < len(target) else None
            if t is not None:
                ax.axvspan(max(0.0, t - tolerance), min(1.0, t + tolerance), color="0.9", zorder=0)
                ax.axvline(t, color="black", linestyle="--", linewidth=1, zorder=1)
            for i in range(m):
                p, lo, hi = (shares[i][c] if c < len(shares[i]) else (None, None, None))
                if p is None:
                    continue
                xerr = None if lo is None or hi is None else [[max(0.0, p - lo)], [max(0.0, hi - p)]]
                ax.errorbar([p], [y[i]], xerr=xerr, fmt="o", color=PROMPT_COLOURS.get(status[i], "0.35"),
                            markersize=4, capsize=2, elinewidth=0.9, zorder=3)
            ax.set_xlim(0, 1)
            ax.set_xlabel(plain(f"share {classes[c]}", 30))
        axes[0].set_yticks(y, [plain(p, 36) for p in prompts])
        axes[0].set_ylim(-0.7, m - 0.3)
        handles = [Line2D([], [], color=PROMPT_COLOURS[s], marker="o", linestyle="", label=label)
                   for s, label in (("differs", "differs (Holm)"), ("within", "within ±ε (Holm)"),
                                    ("neither", "undecided"))]
        fig.legend(handles=handles, loc="outside right upper", fontsize=7)
        fig.suptitle(plain(title, 90), fontsize=9)
        return _save(fig, path)
