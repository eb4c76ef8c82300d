"""PNG plots written next to every sanitized checkpoint: head scores, pruning trajectory, filter scores."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend switch, safe inside notebooks

HEATMAP = "plot_head_scores.png"
TRAJECTORY = "plot_trajectory.png"
FILTER_HIST = "plot_filter_scores.png"
TUNE_TRADEOFF = "plot_tune_tradeoff.png"
TUNE_IMPORTANCES = "plot_tune_importances.png"


def head_heatmap(scores: Sequence[Sequence[float]], pruned: Mapping, path: Path, title: str = "") -> Path:
    """Layer x head heat map of head scores; pruned heads are marked with a cross."""
    data = np.asarray(scores, dtype=float)
    fig = Figure(figsize=(max(4, data.shape[1] * 0.45 + 2), max(3, data.shape[0] * 0.35 + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    for layer, heads in pruned.items():
        for head in heads:
            ax.scatter(int(head), int(layer), marker="x", color="red", s=40)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or "head scores (x = pruned)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def trajectory_plot(trajectory: Sequence[Mapping], baseline: float | None, max_drop: float | None,
                    path: Path, title: str = "") -> Path:
    """Clean validation accuracy along a strategy's run, with the guard line.

    A pruning trajectory is plotted against heads pruned (restores marked); a training trajectory (records with
    an "epoch", as w2s_distill writes) against the epoch.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    by_epoch = bool(trajectory) and "pruned" not in trajectory[0] and "epoch" in trajectory[0]
    xs = [t["epoch"] if by_epoch else t["pruned"] for t in trajectory]
    ys = [t["val_accuracy"] for t in trajectory]
    ax.plot(xs, ys, marker="o", ms=3, lw=1)
    restores = [(t["pruned"], t["val_accuracy"]) for t in trajectory if t.get("action") == "restore"]
    if restores:
        ax.scatter(*zip(*restores), color="orange", zorder=3, label="restore")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls=":", label="before" if by_epoch else "unpruned")
        if max_drop is not None:
            ax.axhline(baseline - max_drop, color="red", ls="--", label="guard")
    ax.set_xlabel("epoch" if by_epoch else "heads pruned")
    ax.set_ylabel("clean validation accuracy")
    ax.set_title(title or ("training trajectory" if by_epoch else "pruning trajectory"))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def filter_histogram(scores: Sequence[float] | np.ndarray, threshold: float | None, path: Path, *, title: str = "",
                     groups: Mapping[str, Sequence[bool]] | None = None) -> Path:
    """Histogram of filter scores with the threshold marked (optionally split into labelled groups)."""
    values = np.asarray(scores, dtype=float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=40) if len(values) else 10
    # matplotlib's stubs type `bins` as Sequence[float]; it takes (and documents) an array of edges
    if groups:
        for name, sel in groups.items():
            ax.hist(values[np.asarray(sel, dtype=bool)], bins=bins, alpha=0.6, label=name)  # type: ignore[arg-type]
    else:
        ax.hist(values, bins=bins, alpha=0.8, label="samples")  # type: ignore[arg-type]
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("score (higher = more suspicious)")
    ax.set_ylabel("samples")
    ax.set_title(title or "filter scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def tune_tradeoff_plot(tune: Mapping, path: Path, title: str = "") -> Path:
    """Canary ASR vs clean-accuracy drop of every finished `purify tune` trial: Pareto front, tolerance, choice."""
    trials = [t for t in tune.get("trials", []) if t.get("state") == "COMPLETE"
              and t.get("canary_asr") is not None and t.get("cacc_drop") is not None]
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    if trials:
        ax.scatter([t["cacc_drop"] for t in trials], [t["canary_asr"] for t in trials], color="grey", s=22,
                   alpha=0.7, label="trial")
    front = sorted((t for t in trials if t["number"] in set(tune.get("pareto_front", []))),
                   key=lambda t: (t["cacc_drop"], t["canary_asr"]))
    if front:
        ax.plot([t["cacc_drop"] for t in front], [t["canary_asr"] for t in front], color="tab:blue", marker="o",
                ms=5, lw=1.2, drawstyle="steps-post", label="Pareto front")
    best = tune.get("best") or {}
    if best.get("canary_asr") is not None and best.get("cacc_drop") is not None:
        ax.scatter([best["cacc_drop"]], [best["canary_asr"]], marker="*", s=220, color="gold", edgecolor="black",
                   zorder=4, label=f"chosen (trial {best.get('number')})")
    tolerance = tune.get("tolerance")
    if tolerance is not None:
        ax.axvline(float(tolerance), color="red", ls="--", lw=1, label=f"tolerance {float(tolerance):g} points")
    planted = (tune.get("canary") or {}).get("asr")
    if planted is not None:
        ax.axhline(float(planted), color="grey", ls=":", lw=1, label="canary ASR before")
    ax.set_xlabel("clean accuracy drop on held-out data (points)")
    ax.set_ylabel("canary ASR")
    ax.set_ylim(-0.03, 1.03)
    pruned = sum(1 for t in tune.get("trials", []) if t.get("state") == "PRUNED")
    ax.set_title(title or f"purify tune: {len(trials)} trials" + (f" (+{pruned} pruned)" if pruned else ""))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def tune_importance_plot(importances: Mapping[str, Mapping[str, float]], path: Path, title: str = "") -> Path:
    """Horizontal bars: each searched knob's importance for each tuning target (canary ASR, CACC drop)."""
    targets = [k for k, v in importances.items() if v]
    params = sorted({p for k in targets for p in importances[k]})
    fig = Figure(figsize=(6, max(2.5, 0.45 * len(params) * max(1, len(targets)) + 1.2)))
    ax = fig.subplots()
    height = 0.8 / max(1, len(targets))
    ys = np.arange(len(params))
    for i, target in enumerate(targets):
        ax.barh(ys + i * height, [float(importances[target].get(p, 0.0)) for p in params], height=height,
                label=target)
    ax.set_yticks(ys + height * (len(targets) - 1) / 2, params)
    ax.set_xlabel("importance (normalised)")
    ax.set_title(title or "knob importances")
    if targets:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def render_report_plots(report: Mapping, folder: Path,
                        scores: Sequence[float] | np.ndarray | None = None) -> list[Path]:
    """Every plot a report has data for, written into `folder`; returns the paths written."""
    folder = Path(folder)
    written = []
    result = report.get("result") or {}
    strategy = (report.get("strategy") or {}).get("name", "")
    if result.get("head_scores") is not None:
        written.append(head_heatmap(result["head_scores"], result.get("pruned_heads", {}), folder / HEATMAP,
                                    f"{strategy}: head scores (x = pruned)"))
    if result.get("trajectory"):
        max_drop = ((report.get("strategy") or {}).get("config") or {}).get("max_acc_drop")
        written.append(trajectory_plot(result["trajectory"], result.get("baseline_val_accuracy"), max_drop,
                                       folder / TRAJECTORY, f"{strategy}: trajectory"))
    filt = report.get("filter") or {}
    if scores is not None and len(scores):
        written.append(filter_histogram(scores, filt.get("threshold"), folder / FILTER_HIST,
                                        title=f"{filt.get('method', 'filter')} scores"))
    tune = report.get("tune") or {}
    if tune.get("trials"):
        written.append(tune_tradeoff_plot(tune, folder / TUNE_TRADEOFF, f"{strategy}: canary ASR vs clean accuracy"))
        importances = {k: v for k, v in (tune.get("importances") or {}).items() if isinstance(v, Mapping) and v}
        if importances:
            written.append(tune_importance_plot(importances, folder / TUNE_IMPORTANCES,
                                                f"{strategy}: knob importances"))
    return written
