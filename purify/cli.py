"""The `purify` command line: run, ls, verify, eval, filter, zoo, demo, report, bench, tune.

`purify MODEL_DIR --strategy X --data FILE --out DIR` is shorthand for `purify run ...`. Errors that are the
user's input print one line and exit with status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, ExportError, PurifyError
from .options import check_seed, parse_sets
from .outputs import interrupt_message, reset_progress

def _add_run_args(p: argparse.ArgumentParser, *, need_model: bool = True) -> None:
    if need_model:
        p.add_argument("model_dir", help="the suspicious checkpoint: a Hugging Face folder with safetensors")
        p.add_argument("--data", required=True, help="untrusted task data (.jsonl, .csv or .tsv with text and label)")
        p.add_argument("--out", required=True, help="folder for the sanitized checkpoint (written atomically)")
    p.add_argument("--strategy", default=None,
                   help="strategy name (see `purify ls`); default: anchor_unlearn, the benchmarked choice (README)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="strategy option, repeatable")
    p.add_argument("--config", help="JSON or YAML file of strategy options (--set wins)")
    p.add_argument("--filter", default=None, help=f"data filter: {_filter_names()} "
                   "(see `purify ls`) or none; default: the benchmarked choice (README)")
    p.add_argument("--filter-set", action="append", metavar="KEY=VALUE", help="filter option, repeatable")
    p.add_argument("--trusted", help="small trusted clean set: used as validation data and as GradShield's probe")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle weights, loaded with torch.load(weights_only=True) (unsafe files are refused)")
    p.add_argument("--text-field", default="text", help="name of the text field in --data (default text)")
    p.add_argument("--label-field", default="label", help="name of the label field in --data (default label)")
    p.add_argument("--eval-clean", help="clean test file for the before/after table")
    p.add_argument("--eval-triggered", help="triggered test file (needs --target)")
    p.add_argument("--target", help="target label of the triggered file (id or name)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per available core)")


def _zoo_name_help() -> str:
    """The zoo entry name grammar with every base, dataset and attack the registries hold."""
    from .zoo.attacks import ATTACKS
    from .zoo.bases import BASES
    from .zoo.datasets import DATASETS

    return (f"base-dataset-attack[-pRATE][-sSEED]; bases {', '.join(BASES)}; datasets {', '.join(DATASETS)}; "
            f"attacks {', '.join(ATTACKS)}")


def _filter_names() -> str:
    """The registered filters' names, for help texts."""
    from .filters import FILTERS

    return ", ".join(FILTERS.names())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="purify",
        description="Purify an already-backdoored transformer checkpoint: filter the task data, remove the "
                    "backdoor with a registered strategy, export a sanitized checkpoint with a report.",
        epilog="Shorthand: `purify MODEL_DIR --strategy rl_prune --data task.jsonl --out sanitized/` = "
               "`purify run ...`",
    )
    parser.add_argument("--version", action="version", version=f"purify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="filter, purify and export one checkpoint")
    _add_run_args(p)

    p = sub.add_parser("ls", help="list registered strategies and filters")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("verify", help="check an export: file hashes, no custom code, pruned heads zero, probe logits",
                       description="Named checks on a folder written by purify, one line each: files_sha256 (every "
                                   "file matches the hash recorded at export), no_custom_code, safetensors_only, "
                                   "pruned_heads_zero, tokenizer_probe and probe_logits (vanilla transformers "
                                   "reproduces the recorded logits). Exits 2 when any check fails.")
    p.add_argument("dir", help="a folder written by purify")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest absolute logit difference accepted between purify's and vanilla loading (1e-4)")

    p = sub.add_parser(
        "invert", help="search the single inserted words that flip samples to one label (trigger inversion)",
        description="Trigger inversion from the model and task data alone: for every label, rank the whole-word "
                    "vocabulary by the gradient of that label's loss at an inserted placeholder (HotFlip), then "
                    "insert the best candidates for real and measure how many samples of the other labels they "
                    "flip. An insertion backdoor shows as words flipping nearly all samples to one label; a clean "
                    "model's best words are ordinary label words that flip far fewer.")
    p.add_argument("model_dir", help="the suspicious checkpoint: a Hugging Face folder with safetensors")
    p.add_argument("--data", required=True, help="task data (.jsonl, .csv or .tsv with text and label)")
    p.add_argument("--samples", type=int, default=64, help="probe samples per label (default 64)")
    p.add_argument("--candidates", type=int, default=32, help="words measured per label and round (default 32)")
    p.add_argument("--rounds", type=int, default=2, help="ranking rounds (default 2)")
    p.add_argument("--show", type=int, default=8, help="words shown per label (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for the probe samples and insert positions (default 0)")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle checkpoint (weights only)")
    p.add_argument("--out", help="write the result as JSON here")

    p = sub.add_parser("eval", help="CACC and ASR of a model on a clean and a triggered file")
    p.add_argument("model_dir", help="a classifier checkpoint folder (a zoo entry's model/ or a purify export)")
    p.add_argument("--clean", required=True, help="clean test file")
    p.add_argument("--triggered", help="triggered test file (samples whose true label is not the target)")
    p.add_argument("--target", help="target label (id or name); read from a zoo manifest when omitted")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle checkpoint (weights only)")

    p = sub.add_parser("filter", help="score untrusted data and keep the clean samples")
    p.add_argument("data", help="untrusted task data (.jsonl, .csv or .tsv with text and label)")
    p.add_argument("--model", required=True, help="the suspicious checkpoint (the filters score samples on it)")
    p.add_argument("--method", default=None, help=f"one of {_filter_names()} (default: the "
                   "benchmarked choice, as in `purify run`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="filter option, repeatable")
    p.add_argument("--threshold", type=float, help="override the automatic threshold")
    p.add_argument("--trusted", help="trusted clean set (GradShield's probe)")
    p.add_argument("--seed", type=int, default=0, help="seed for the filter's random choices (default 0)")
    p.add_argument("--out", required=True, help="kept samples (.jsonl); scores and a histogram are written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace --out and the files beside it if they exist")

    p = sub.add_parser("zoo", help="build and inspect backdoored reference checkpoints")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zb = zsub.add_parser("build", help="build entries, e.g. minilm-movie-badnets-p10-s0 (cached)")
    zb.add_argument("names", nargs="+", metavar="NAME",
                    help=_zoo_name_help())
    zb.add_argument("--force", action="store_true",
                    help="rebuild even if cached, retraining the shared clean reference too")
    zsub.add_parser("ls", help="list built entries with their CACC and ASR")
    zs = zsub.add_parser("show", help="print an entry's manifest")
    zs.add_argument("name", help="a built entry's name (see `purify zoo ls`)")

    p = sub.add_parser("demo", help="the main job on the built-in default backdoored model")
    p.add_argument("--strategy", default=None, help="any registered strategy (default: the benchmarked choice)")
    p.add_argument("--filter", default=None, help=f"{_filter_names()} or none "
                   "(default: the benchmarked choice)")
    p.add_argument("--zoo", default=None, help="zoo entry to purify (default minilm-movie-badnets-p10-s0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="strategy option, repeatable")
    p.add_argument("--out", default=None, help="output folder (default runs/demo-<strategy>)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")

    p = sub.add_parser(
        "tune", help="choose a strategy's knobs against a planted canary backdoor, then purify with them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Tune a strategy's knobs without knowing the real trigger, then purify with the chosen knobs.

1. canary: a known, random trigger of your chosen family (--canary) is planted into a COPY of the
   suspicious model by a short fine-tune on part of the clean data (after the filter); its attack success
   rate (ASR) must reach 90% with clean accuracy kept, or tuning stops and says so.
2. search: an optuna study (seeded TPE sampler) over the knobs the strategy declares in its config's
   search_space(); each trial runs the strategy on a fresh copy of the canaried model and scores the
   canary's ASR and the clean accuracy drop on held-out clean data. The default objective minimises
   canary ASR subject to a drop <= --tolerance points; --objective pareto keeps both objectives (Pareto
   front). Hopeless trials are pruned. The study is stored in OUT/tune_study.db: rerun the same command to
   resume an interrupted study (--trials counts distinct knob settings; pass --overwrite to add trials to a
   finished run). Knobs the sampler proposes again reuse their recorded figures.
3. apply: the chosen knobs run on the ORIGINAL model exactly as `purify run` does; the export's
   purify_report.json gains a "tune" block (canary, every trial, the choice, Pareto front, knob
   importances) and plot_tune_tradeoff.png / plot_tune_importances.png.

Options given with --set are pinned (not searched). The canary is the defender's own trigger, planted in
clean data: no triggered test data is looked at.""",
        epilog="example: purify tune suspicious/ --strategy gradient_prune --data task.jsonl --out sanitized/ "
               "--trials 30 --tolerance 1.0",
    )
    _add_run_args(p)
    p.add_argument("--trials", type=int, default=20,
                   help="distinct knob settings the study should measure in all (default 20; a resumed study runs "
                        "the rest)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds")
    p.add_argument("--canary", choices=("rare_tokens", "sentence"), default="rare_tokens",
                   help="canary trigger family: rare whole-word vocabulary tokens (default) or a random inserted "
                        "sentence")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="largest clean accuracy drop (points, on held-out clean data) a choice may cost (default 1.0)")
    p.add_argument("--objective", choices=("constrained", "pareto"), default="constrained",
                   help="constrained: minimise canary ASR subject to --tolerance (default); pareto: minimise ASR and "
                        "drop, then pick the lowest-ASR front point within --tolerance")
    p.add_argument("--canary-epochs", type=int, default=None, help="epochs of the canary fine-tune (default 3)")
    p.add_argument("--canary-lr", type=float, default=None, help="learning rate of the canary fine-tune (default 1e-4)")
    p.add_argument("--canary-rate", type=float, default=None,
                   help="share of the canary fine-tuning slice that is triggered (default 0.1)")
    p.add_argument("--canary-max-drop", type=float, default=None,
                   help="clean accuracy (points) planting the canary may cost before tuning gives up (default 3)")
    p.add_argument("--no-prune", action="store_true", help="score every trial fully (no pruning of hopeless trials)")

    p = sub.add_parser("report", help="re-render a run's plots and print its summary")
    p.add_argument("dir")

    p = sub.add_parser("bench", help="run a benchmark matrix (resumable; finished cells are cached)")
    p.add_argument("--suite", required=True, choices=("zoo", "pruning", "w2s", "filters", "tune", "pipeline"),
                   help="which matrix: zoo entries, pruning strategies, w2s_distill variants, data filters, tune")
    p.add_argument("--zoo", help="comma-separated zoo entries (default: the suite's matrix)")
    p.add_argument("--strategies", default="all", help="comma-separated methods, or all (default)")
    p.add_argument("--filters", help="comma-separated filters for --suite filters (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds on the multi-seed entries (default 3)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="option given to every cell's method (a filter's target matrix, a strategy knob), "
                        "repeatable; cells with other options are cached apart")
    p.add_argument("--out", default="benchmarks", help="output folder (default benchmarks/)")
    p.add_argument("--cached-only", action="store_true",
                   help="run nothing: write the tables from the cells already cached and name the missing ones")

    return parser


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

    canary = CanaryConfig(family=args.canary)
    max_drop = None if args.canary_max_drop is None else args.canary_max_drop / 100.0
    for field_name, value in (("epochs", args.canary_epochs), ("lr", args.canary_lr),
                              ("poison_rate", args.canary_rate), ("max_cacc_drop", max_drop)):
        if value is not None:
            setattr(canary, field_name, value)
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
