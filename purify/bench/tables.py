"""The benchmark's tables and plots: markdown per suite and one figure per suite, all written
from finished cell records (`purify.bench` runs the cells)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .pipeline import pipeline_table

def finished(results: list[dict]) -> list[dict]:
    """The results of cells that ran to the end (not failed, not missing)."""
    return [r for r in results if "error" not in r and not r.get("missing")]


def _label(cell: dict) -> str:
    options = cell["cell"]["options"]
    objective = f" ({options['objective']})" if "objective" in options else ""
    return options.get("_label") or cell["cell"]["method"] + objective


def mean_sd(values: Sequence[float | None]) -> str:
    """Mean ± sample sd in percent over the values that are present ("-" when none is)."""
    import numpy as np

    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{100 * present[0]:.1f}"
    return f"{100 * np.mean(present):.1f} ± {100 * np.std(present, ddof=1):.1f}"


def asr_cut(result: dict) -> float:
    """Share of the starting ASR removed (1 = all of it, 0 = none, negative = ASR rose)."""
    before = result["asr_before"]
    return (before - result["asr_after"]) / before if before > 0 else 0.0


def _devices(results: list[dict]) -> str:
    names = sorted({r.get("device", "cpu") for r in results})
    return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


def markdown_table(suite: str, results: list[dict], defaults: dict[tuple[str, str], dict] | None = None) -> str:
    """The suite's markdown table (percentages; mean ± sd over seeds where there are several).

    For the tune suite, `defaults` ((entry, method) -> default-knob record, see `default_knob_results`) adds the
    comparison of tuned and default knobs on the real trigger.
    """
    ok = finished(results)
    failed = [r for r in results if "error" in r]
    missing = [r for r in results if r.get("missing")]
    lines = []
    if suite == "pipeline":
        lines += pipeline_table(ok)
    elif suite == "pruning":
        from .pruning import pruning_table

        lines += pruning_table(ok)
    elif suite == "zoo":
        lines += ["| entry | clean ref CACC | backdoored CACC | ASR | ASR floor (clean ref) | CACC drop | "
                  "build s | clean ref train s | peak MB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ok:
            clean_s = r.get("clean_train_seconds")
            clean_s = "?" if clean_s is None else f"{clean_s:.0f}" + (" (shared)" if r.get("clean_reused_from")
                                                                      else "")
            lines.append(f"| {r['cell']['entry']} | {100 * r['clean_cacc']:.1f} | {100 * r['cacc']:.1f} | "
                         f"{100 * r['asr']:.1f} | {100 * r['clean_asr']:.1f} | "
                         f"{100 * (r['clean_cacc'] - r['cacc']):.1f} | {r['build_seconds']:.0f} | {clean_s} | "
                         f"{r['peak_rss_mb']:.0f} |")
    elif suite in ("w2s", "tune"):
        lines += ["| entry | method | seeds | CACC before | CACC after | ASR before | ASR after | ASR floor | "
                  "ASR cut | heads pruned | seconds | device | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in ok:
            groups.setdefault((r["cell"]["entry"], _label(r)), []).append(r)
        for (entry, label), rs in groups.items():
            lines.append(
                f"| {entry} | {label} | {len(rs)} | {mean_sd([r['cacc_before'] for r in rs])} | "
                f"{mean_sd([r['cacc_after'] for r in rs])} | {mean_sd([r['asr_before'] for r in rs])} | "
                f"{mean_sd([r['asr_after'] for r in rs])} | {100 * rs[0]['asr_floor']:.1f} | "
                f"{mean_sd([asr_cut(r) for r in rs])} | "
                f"{sum(r['heads_pruned'] for r in rs) / len(rs):.1f} | {sum(r['seconds'] for r in rs) / len(rs):.0f} | "
                f"{_devices(rs)} | {max(r['peak_rss_mb'] for r in rs):.0f} |")
    elif suite == "filters":
        lines += ["| entry | filter | options | precision | recall | F1 | AUROC | length-matched AUROC | "
                  "length AUROC | clean kept | threshold | ms/sample | vmap / floor | loop / vmap | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ok:
            speed = r.get("speed") or {}
            ratios = (f"{speed['vmap_over_floor']:.2f} | {speed['loop_over_vmap']:.1f}" if speed else "- | -")
            options = ", ".join(f"{k}={v}" for k, v in sorted(r["cell"]["options"].items()) if k != "_label") or "-"
            lines.append(f"| {r['cell']['entry']} | {r['cell']['method']} | {options} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {r['f1']:.3f} | {r['auroc']:.3f} | "
                         f"{r.get('length_matched_auroc', float('nan')):.3f} | "
                         f"{r.get('length_auroc', float('nan')):.3f} "
                         f"| {r['clean_kept']:.3f} | {r['threshold']:.4g} ({r['threshold_method']}) | "
                         f"{r['ms_per_sample']:.1f} | {ratios} | {r['peak_rss_mb']:.0f} |")
    if suite == "tune" and ok:
        lines.append("\nKnobs chosen on the canary (then applied to the real model):\n")
        for r in ok:
            canary = r["canary"]
            knobs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in sorted(r["best_params"].items()))
            lines.append(f"- {r['cell']['entry']} / {_label(r)}: {knobs} (canary ASR "
                         f"{100 * r['chosen']['canary_asr']:.1f}, canary CACC drop {r['chosen']['cacc_drop']:.2f} "
                         f"points, {r['n_complete']} complete + {r['n_pruned']} pruned trials; canary planted at ASR "
                         f"{100 * canary['asr']:.1f}{_defaults_on_canary(r)})")
        lines += ["\nTuned knobs versus the same strategy with its default knobs (seed 0 of the pruning / w2s "
                  "suite, same entry and data) on the real trigger:\n",
                  "| entry | method | ASR after: tuned | ASR after: defaults | CACC after: tuned | "
                  "CACC after: defaults | seconds: tune | seconds: defaults |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ok:
            base = (defaults or {}).get((r["cell"]["entry"], r["cell"]["method"]))
            asr, cacc = ((f"{100 * r[k]:.1f}", f"{100 * base[k]:.1f}" if base else "not measured")
                         for k in ("asr_after", "cacc_after"))
            base_seconds = f"{base['seconds']:.0f}" if base else "-"
            lines.append(f"| {r['cell']['entry']} | {_label(r)} | {asr[0]} | {asr[1]} | {cacc[0]} | {cacc[1]} | "
                         f"{_tune_seconds(r)} | {base_seconds} |")
        lines.append("\nTune seconds are canary + trials + final apply summed over every process that resumed the "
                     "study (? where a part was not recorded); a bare figure is one process's run: the whole tune "
                     "when it ran in one go, the last resumed part otherwise.")
    for r in failed:
        lines.append(f"\nFAILED {r['cell']['entry']} / {_label(r)}: {r['error']}")
    if missing:
        names = ", ".join(f"{r['cell']['entry']} / {_label(r)} (seed {r['cell']['seed']})" for r in missing)
        lines.append(f"\nNot run yet ({len(missing)} of {len(results)} cells; the command without --cached-only "
                     f"runs them): {names}")
    return "\n".join(lines) + "\n"


def _defaults_on_canary(r: dict) -> str:
    """"; the defaults (trial N): canary ASR .., drop .." when the cell kept its study's trial records."""
    first = next((t for t in r.get("study_trials", []) if t.get("origin") == "defaults" and "canary_asr" in t), None)
    if first is None:
        return ""
    return (f"; the default knobs (trial {first['number']}): canary ASR {100 * first['canary_asr']:.1f}, "
            f"CACC drop {first['cacc_drop']:.2f} points")


def _tune_seconds(r: dict) -> str:
    """A tune row's cost: canary + trials + apply when the cell recorded them, else the cell's own seconds."""
    if "trial_seconds" not in r:
        resumed = " (last resumed run only)" if r.get("resumed_from") else ""
        return f"{r['seconds']:.0f}{resumed}"
    parts = [r["canary_seconds"], r["trial_seconds"], r["apply_seconds"]]
    known = [p for p in parts if p is not None]
    total = f"{sum(known):.0f}" + ("" if len(known) == len(parts) else "+?")
    return f"{total} = " + " + ".join("?" if p is None else f"{p:.0f}" for p in parts)


def plot_suite(suite: str, results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    ok = finished(results)
    if not ok:
        return
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if suite == "zoo":
        ax.scatter([100 * r["cacc"] for r in ok], [100 * r["asr"] for r in ok])
        for r in ok:
            ax.annotate(r["cell"]["entry"].replace("-p10-s0", ""), (100 * r["cacc"], 100 * r["asr"]), fontsize=6)
        ax.set_xlabel("backdoored CACC (%)")
        ax.set_ylabel("ASR (%)")
    elif suite in ("pruning", "w2s", "tune", "pipeline"):
        for label in sorted({_label(r) for r in ok}):
            rs = [r for r in ok if _label(r) == label]
            ax.scatter([100 * (r["cacc_before"] - r["cacc_after"]) for r in rs], [100 * r["asr_after"] for r in rs],
                       label=label, s=18)
        ax.set_xlabel("CACC drop (points)")
        ax.set_ylabel("ASR after (%)")
        ax.legend(fontsize=7)
    else:
        for method in sorted({r["cell"]["method"] for r in ok}):
            rs = [r for r in ok if r["cell"]["method"] == method]
            ax.scatter([r["clean_kept"] for r in rs], [r["recall"] for r in rs], label=method)
        ax.set_xlabel("share of clean samples kept")
        ax.set_ylabel("recall of poisoned samples")
        ax.legend(fontsize=7)
    ax.set_title(f"purify bench: {suite}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
