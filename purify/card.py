"""The model card (`README.md`) written beside a sanitized checkpoint: what was done, what was found, what is left.

Its first heading is the run's verdict (`purify.verdict`), so a checkpoint whose backdoor survived never goes out
titled "sanitized".
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from .verdict import Verdict

_FRONT_MATTER = ["---", "library_name: transformers", "tags:", "- purify", "- backdoor-defense", "---", ""]


def _title(report: Mapping | None) -> str:
    verdict = (report or {}).get("verdict")
    if verdict:
        return str(verdict.get("headline"))
    return Verdict("unknown", "").headline()


def _findings(report: Mapping | None) -> list[str]:
    """The trigger candidates the run confirmed, with their flip rates and target, and the probe's figures."""
    probe = (report or {}).get("probe")
    if not probe:
        return []
    lines = ["", "## What the run found", ""]
    triggers = probe.get("triggers") or []
    if triggers:
        lines.append(f"Suspected target label: `{probe.get('suspected_target')}` (source: {probe.get('source')}).")
        lines += ["", "| trigger candidate | kind | flip rate |", "|---|---|---|"]
        lines += [f"| `{t['text']}` | {t['kind']} | {t['flip_rate']:.2f} |" for t in triggers[:20]]
    else:
        lines.append("No trigger word or phrase was confirmed.")
    for when in ("before", "after"):
        fig = probe.get(when) or {}
        if fig.get("lift") is not None:
            lines.append(f"- probe {when}: proxy ASR {fig['proxy_asr']:.4f}, clean target rate "
                         f"{fig['clean_target_rate']:.4f}, lift {fig['lift']:+.4f}")
    return lines


def _metrics(report: Mapping | None) -> list[str]:
    metrics = (report or {}).get("metrics")
    if not metrics:
        return []
    lines = ["", "## Before and after", "", "| metric | before | after |", "|---|---|---|"]
    for key in ("cacc", "asr", "trigger_lift"):
        before, after = metrics.get("before", {}).get(key), metrics.get("after", {}).get(key)
        if before is not None and after is not None:
            lines.append(f"| {key.upper().replace('_', ' ')} | {before:.4f} | {after:.4f} |")
    return lines


def model_card(meta: Mapping, report: Mapping | None) -> str:
    """The card's markdown text from the export metadata and the run report."""
    pruned = meta.get("pruned_heads", {})
    n_pruned = sum(len(v) for v in pruned.values())
    lines = [*_FRONT_MATTER, f"# {_title(report)}", ""]
    verdict = (report or {}).get("verdict")
    if verdict:
        lines += [f"Verdict: **{verdict['status']}** ({verdict['evidence']}).", ""]
    lines += [
        "This checkpoint was produced by [purify](https://pypi.org/project/purify-backdoor/) from a model that may "
        "have carried a backdoor. It loads with plain `transformers`; no custom code is needed.", "",
        f"- strategy: `{meta.get('strategy', 'none')}`",
        f"- heads pruned: {n_pruned}" + (f" ({json.dumps(pruned)})" if n_pruned else ""),
        f"- git hash: `{meta.get('git_hash')}`",
    ]
    filt = meta.get("filter")
    if filt:
        lines.append(f"- filter: `{filt.get('method')}` kept {filt.get('n_kept')} of {filt.get('n')} samples")
    lines += _findings(report) + _metrics(report)
    lines += ["", "Pruned heads are zeroed columns of the attention output projection, so shapes are unchanged.",
              "The full run record is in `purify_report.json`.", ""]
    return "\n".join(lines)
