"""`purify bench --suite pruning`: the six pruning strategies in both objectives, in the realistic setting.

A cell runs `purify run --strategy NAME --set objective=...` behind the default filter, with the entry's trusted
split as validation and no ground-truth flag read (`purify.bench.pipeline`). The table adds what the pruning
issue asks for: the share of the removable ASR cut, (before - after) / (before - floor), the trigger lift, the
share of the backdoor proxy the mask removed, heads pruned, time and peak memory.
"""
from __future__ import annotations

from pathlib import Path

from ..backdoor_signal import OBJECTIVES
from .matrix import Cell
from .tables import mean_sd

PRUNING_ENTRIES = tuple([f"minilm-movie-{a}-p10-s0" for a in ("badnets", "insertsent", "syntactic", "style",
                                                                "clean_label")]
                        + [f"smollm2-movie-{a}-p10-s0" for a in ("badnets", "insertsent")])


def run_pruning_cell(cell: Cell, work: Path) -> dict:
    """A cell with an objective is a realistic pipeline run; one without is the w2s suite's shared clean fine-tune
    on the flag-cleaned split (its upper-bound setting)."""
    if "objective" not in cell.options:
        from .cells import run_strategy_cell

        return run_strategy_cell(cell, work)
    from .pipeline import run_pipeline_cell

    return run_pipeline_cell(cell, work)


def removable_cut(r: dict) -> float | None:
    """Share of the removable ASR cut: (before - after) / (before - floor); None when nothing was removable."""
    room = r["asr_before"] - r["asr_floor"]
    return (r["asr_before"] - r["asr_after"]) / room if room > 0 else None


def proxy_removed(r: dict) -> float | None:
    """Share of the proxy ASR above its clean rate that the mask removed (None without a backdoor signal)."""
    facts = r.get("objective") or {}
    before, after, base = (facts.get(k) for k in ("proxy_before", "proxy_after", "proxy_clean_rate"))
    if before is None or after is None or base is None or before <= base:
        return None
    return (before - after) / (before - base)


def pruning_table(ok: list[dict]) -> list[str]:
    """Markdown rows: one per entry, strategy and objective (mean ± sd over seeds), in the suites' order."""
    lines = ["| entry | strategy | objective | seeds | ASR before | ASR after | floor | removable cut | trigger lift | "
             "CACC before -> after | proxy before -> after (clean rate) | proxy removed | heads pruned | s | peak MB | "
             "git |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in ok:
        c = r["cell"]
        groups.setdefault((c["entry"], c["method"], c["options"].get("objective", "-")), []).append(r)
    for (entry, method, objective), rs in groups.items():
        first = rs[0]
        proxies = [(r.get("objective") or {}) for r in rs]
        proxy = "-"
        if proxies[0].get("proxy_before") is not None:
            before, after, base = (mean_sd([p.get(k) for p in proxies])
                                   for k in ("proxy_before", "proxy_after", "proxy_clean_rate"))
            proxy = f"{before} -> {after} ({base})"
        commits = ", ".join(dict.fromkeys(((r.get("provenance") or {}).get("git_hash") or "-")[:7] for r in rs))
        lines.append(
            f"| {entry} | {method} | {objective} | {len(rs)} | {mean_sd([r['asr_before'] for r in rs])} | "
            f"{mean_sd([r['asr_after'] for r in rs])} | {100 * first['asr_floor']:.1f} | "
            f"{mean_sd([removable_cut(r) for r in rs])} | {mean_sd([r.get('trigger_lift') for r in rs])} | "
            f"{mean_sd([r['cacc_before'] for r in rs])} -> {mean_sd([r['cacc_after'] for r in rs])} | {proxy} | "
            f"{mean_sd([proxy_removed(r) for r in rs])} | {sum(r.get('heads_pruned', 0) for r in rs) / len(rs):.1f} | "
            f"{sum(r['seconds'] for r in rs) / len(rs):.0f} | {max(r.get('peak_rss_mb', 0) for r in rs):.0f} | "
            f"{commits} |")
    return lines


def objective_options() -> list[dict]:
    """One cell option set per objective, the new default first."""
    return [{"objective": o} for o in OBJECTIVES]
