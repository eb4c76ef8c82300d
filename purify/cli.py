"""The `purify` command line: run, ls, verify, eval, filter, zoo, demo, report, bench, tune.

`purify MODEL_DIR --strategy X --data FILE --out DIR` is shorthand for `purify run ...`. Errors that are the
user's input print one line and exit with status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .errors import ConfigError, ExportError, PurifyError
from .options import check_seed, parse_sets
from .cli_parser import build_parser
from .outputs import interrupt_message, reset_progress

def _resolve_target(value: str | None, label_names: list[str] | None) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    if label_names and value in label_names:
        return label_names.index(value)
    raise ConfigError(f"target {value!r} is neither a label id nor one of {label_names}")


def _pipeline_config(args):
    from .pipeline import DEFAULT_FILTER, DEFAULT_STRATEGY, PipelineConfig

    label_names = _model_label_names(args.model_dir)
    return PipelineConfig(
        strategy=args.strategy or DEFAULT_STRATEGY, strategy_options=parse_sets(args.set, args.config),
        filter=args.filter or DEFAULT_FILTER, filter_options=parse_sets(args.filter_set, flag="--filter-set"),
        trusted=args.trusted,
        seed=args.seed, allow_pickle=args.allow_pickle, text_field=args.text_field, label_field=args.label_field,
        eval_clean=args.eval_clean, eval_triggered=args.eval_triggered,
        target=_resolve_target(args.target, label_names), overwrite=args.overwrite, threads=args.threads,
        filter_cache=not args.no_filter_cache,
    )


def cmd_run(args) -> int:
    from .checkpoint import load_checkpoint  # noqa: F401  (fail early on a bad install)
    from .pipeline import run_pipeline

    cfg = _pipeline_config(args)
    report = run_pipeline(args.model_dir, args.data, args.out, cfg)
    from .report import print_summary

    print_summary(report)
    return 0


def cmd_tune(args) -> int:
    from .canary import CanaryConfig
    from .tune import TuneConfig, run_tune

    max_drop = None if args.canary_max_drop is None else args.canary_max_drop / 100.0
    given = {"family": args.canary, "epochs": args.canary_epochs, "lr": args.canary_lr,
             "poison_rate": args.canary_rate, "max_cacc_drop": max_drop}
    canary = CanaryConfig.from_dict({k: v for k, v in given.items() if v is not None})
    tune = TuneConfig(trials=args.trials, timeout=args.timeout, tolerance=args.tolerance, objective=args.objective,
                      prune=not args.no_prune, canary=canary)
    report = run_tune(args.model_dir, args.data, args.out, _pipeline_config(args), tune)
    from .report import print_summary

    print_summary(report)
    best = report["tune"]["best"]
    print(f"tune: trial {best['number']} of {report['tune']['n_trials']} chosen (canary ASR {best['canary_asr']:.4f}, "
          f"clean accuracy drop {best['cacc_drop']:+.2f} points"
          f"{'' if best['feasible'] else ', over the tolerance'}): {json.dumps(best['params'])}")
    return 0


def _model_label_names(model_dir: str) -> list[str] | None:
    config = Path(model_dir) / "config.json"
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
    except (OSError, json.JSONDecodeError):
        return None
    return [id2label[k] for k in sorted(id2label, key=int)] if id2label else None


def cmd_ls(args) -> int:
    from .registry import available_strategies

    strategies = available_strategies()
    filters = _filters()
    if args.json:
        print(json.dumps({"strategies": {k: v.description for k, v in strategies.items()}, "filters": filters},
                         indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("method")
    for name, entry in strategies.items():
        table.add_row(name, entry.description)
    console = Console()
    console.print(table)
    if filters:
        ftable = Table(title="filters")
        ftable.add_column("name")
        ftable.add_column("method")
        for name, text in filters.items():
            ftable.add_row(name, text)
        console.print(ftable)
    return 0


def _filters() -> dict[str, str]:
    from .filters import FILTERS

    return {name: FILTERS[name].description for name in FILTERS.names()}


def cmd_filter(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_task_data, write_jsonl
    from .filters import build_filter
    from .outputs import atomic_files, check_output_files
    from .plots import filter_histogram

    options = {**parse_sets(args.set), "seed": args.seed}
    if args.threshold is not None:
        options["threshold"] = args.threshold
    if args.method is None:
        from .pipeline import DEFAULT_FILTER

        args.method = DEFAULT_FILTER
    flt = build_filter(args.method, options)
    out = Path(args.out)
    stem = out.with_suffix("")
    scores_path = Path(f"{stem}.scores.jsonl")
    paths = [out, scores_path, Path(f"{stem}.hist.png"), Path(f"{stem}.filter.json")]
    check_output_files(paths, [args.data, args.model, args.trusted], overwrite=args.overwrite)
    loaded = load_checkpoint(args.model)
    names = _model_label_names(args.model)
    data = load_task_data(args.data, label_names=names)
    trusted = load_task_data(args.trusted, label_names=names) if args.trusted else None
    result = flt.run(loaded, data, trusted=trusted)
    with atomic_files(paths) as (kept_tmp, scores_tmp, hist_tmp, summary_tmp):  # all four appear together
        write_jsonl(kept_tmp, result.kept.samples, include_poisoned=False)
        with open(scores_tmp, "w") as fh:
            for sample, score, flag in zip(data.samples, result.scores, result.flagged):
                fh.write(json.dumps({"index": sample.index, "score": float(score), "removed": bool(flag)}) + "\n")
        filter_histogram(result.scores, result.threshold, hist_tmp, title=f"{args.method} scores")
        summary_tmp.write_text(json.dumps(result.summary(), indent=2) + "\n")
    print(f"{args.method}: kept {len(result.kept)} of {len(data)} samples (threshold {result.threshold:.4g}, "
          f"{result.threshold_method}); wrote {out}, {scores_path}, {stem}.hist.png")
    return 0


def cmd_verify(args) -> int:
    from .terminal import printable
    from .verify import verify

    if not 0 <= args.atol < float("inf"):
        raise ConfigError(f"--atol {args.atol}: expected a finite tolerance >= 0")
    result = verify(args.dir, atol=args.atol)
    for check in result.checks:
        print(printable(f"{'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}"))
    if not result.ok:
        raise ExportError(f"{args.dir}: {result.message}")
    print(result.message)
    return 0


def cmd_invert(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_task_data
    from .inversion import invert_triggers
    from .outputs import atomic_files, check_output_files
    from .terminal import printable

    if args.out:  # a result file, replaced if it exists; never one of the inputs
        check_output_files([args.out], [args.model_dir, args.data], overwrite=True)
    loaded = load_checkpoint(args.model_dir, allow_pickle=args.allow_pickle)
    data = load_task_data(args.data, label_names=_model_label_names(args.model_dir))
    inversion = invert_triggers(loaded.model, loaded.tokenizer, data, samples=args.samples,
                                candidates=args.candidates, rounds=args.rounds, keep=args.show, seed=args.seed,
                                progress="trigger inversion")
    for r in inversion.labels:  # label names and vocabulary words come from untrusted files
        words = ", ".join(f"{printable(w)} {100 * rate:.0f}%" for w, rate in r.words)
        print(f"label {printable(data.label_names[r.target])} (base rate {100 * r.base_rate:.0f}%): {words}")
    print(f"suspected target: {printable(data.label_names[inversion.suspected_target])}")
    if args.out:
        with atomic_files([args.out]) as (tmp,):
            tmp.write_text(json.dumps(inversion.summary(args.show), indent=2) + "\n")
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_task_data
    from .evaluate import evaluate_model
    from .outputs import atomic_files, check_output_files

    if args.out:  # a result file, replaced if it exists; never one of the inputs
        check_output_files([args.out], [args.model_dir, args.clean, args.triggered], overwrite=True)
    loaded = load_checkpoint(args.model_dir, allow_pickle=args.allow_pickle)
    names = _model_label_names(args.model_dir)
    clean = load_task_data(args.clean, label_names=names)
    triggered = load_task_data(args.triggered, label_names=names) if args.triggered else None
    target = _resolve_target(args.target, names)
    if triggered is not None and target is None:
        manifest = Path(args.triggered).resolve().parent.parent / "manifest.json"
        if manifest.exists():
            target = int(json.loads(manifest.read_text())["spec"]["target"])
        else:
            raise ConfigError("--triggered needs --target (no zoo manifest.json found next to the data folder)")
    ev = evaluate_model(loaded.model, loaded.tokenizer, clean, triggered, target, progress=True)
    line = f"CACC {ev.cacc:.4f} on {ev.n_clean} clean samples"
    if ev.asr is not None:
        line += f"; ASR {ev.asr:.4f} on {ev.n_triggered} triggered non-target samples (target {target})"
    if ev.trigger_lift is not None:
        line += (f"; trigger lift {ev.trigger_lift:+.4f} (the clean non-target samples go to the target at "
                 f"{ev.clean_target_rate:.4f} without the trigger)")
    print(line)
    if args.out:
        with atomic_files([args.out]) as (tmp,):
            tmp.write_text(json.dumps(ev.to_dict(), indent=2) + "\n")
    return 0


def cmd_zoo(args) -> int:
    from .zoo.build import ZooSpec, build_entry, list_entries, open_entry

    if args.zoo_command == "build":
        for name in args.names:
            entry = build_entry(ZooSpec.parse(name), force=args.force)
            m = entry.manifest["metrics"]
            print(f"{entry.manifest['name']}: backdoored CACC {m['backdoored']['cacc']:.4f} "
                  f"ASR {m['backdoored']['asr']:.4f}; clean reference CACC {m['clean']['cacc']:.4f} "
                  f"ASR {m['clean']['asr']:.4f}; built in {entry.manifest['build_seconds']} s -> {entry.path}")
        return 0
    if args.zoo_command == "ls":
        entries = list_entries()
        if not entries:
            print("no zoo entries built yet; try `purify zoo build minilm-movie-badnets-p10-s0`")
        for entry in entries:
            m = entry.manifest["metrics"]
            print(f"{entry.manifest['name']:40s} CACC {m['backdoored']['cacc']:.4f}  ASR {m['backdoored']['asr']:.4f}"
                  f"  (clean ref CACC {m['clean']['cacc']:.4f}, ASR floor {m['clean']['asr']:.4f})")
        return 0
    if args.zoo_command == "show":
        print(json.dumps(open_entry(args.name).manifest, indent=2))
        return 0
    raise ConfigError("purify zoo needs a subcommand: build, ls or show")


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(strategy=args.strategy, filter_name=args.filter, zoo=args.zoo,
             options=parse_sets(args.set), out=args.out, seed=args.seed)
    return 0


def cmd_report(args) -> int:
    from .report import rerender

    rerender(args.dir)
    return 0


def cmd_bench(args) -> int:
    from .bench import run_suite

    methods = None
    if args.suite == "filters" and args.filters:
        methods = args.filters.split(",")
    elif args.strategies != "all":
        methods = args.strategies.split(",")
    entries = args.zoo.split(",") if args.zoo else None
    command = "purify bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    md = run_suite(args.suite, Path(args.out), entries=entries, methods=methods, seeds=args.seeds, command=command,
                   options=parse_sets(args.set, seed_flag="--seeds"), cached_only=args.cached_only)
    print(md.read_text())
    return 0


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "verify": cmd_verify, "eval": cmd_eval, "invert": cmd_invert,
            "filter": cmd_filter, "zoo": cmd_zoo, "demo": cmd_demo, "report": cmd_report, "bench": cmd_bench,
            "tune": cmd_tune}
#: the subcommand names, which `main` tells apart from the `purify MODEL_DIR ...` shorthand
SUBCOMMANDS = tuple(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `purify` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        argv = ["run", *argv]  # `purify MODEL_DIR --strategy X ...`
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = COMMANDS.get(args.command)
    if handler is None:
        print(f"purify: error: `purify {args.command}` is not available in this version", file=sys.stderr)
        return 2
    reset_progress()
    try:
        check_seed(args)
        return handler(args)
    except PurifyError as exc:
        from .terminal import printable

        print(f"purify: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "tune" and (Path(args.out) / "tune_study.db").exists():
            print(f"purify: interrupted; the study is kept in {Path(args.out) / 'tune_study.db'}: rerun the same "
                  "command to resume it", file=sys.stderr)
        else:
            print(f"purify: interrupted; {interrupt_message()}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
