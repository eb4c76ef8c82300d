"""The `purify` argument parser: one function per subcommand, with the help texts read from the registries."""
from __future__ import annotations

import argparse

from . import __version__


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
    p.add_argument("--no-filter-cache", action="store_true",
                   help="recompute the filter even when $PURIFY_CACHE/filters holds its result for the same model, "
                        "data, options and code (by default that result is reused)")
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


def _suite_names() -> list[str]:
    """The registered benchmark suites (`--suite` choices)."""
    from .bench.suites import SUITES

    return SUITES.names()


def _add_run(sub) -> None:
    """The `run` subcommand's arguments."""
    p = sub.add_parser("run", help="filter, purify and export one checkpoint")
    _add_run_args(p)


def _add_ls(sub) -> None:
    """The `ls` subcommand's arguments."""
    p = sub.add_parser("ls", help="list registered strategies and filters")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_verify(sub) -> None:
    """The `verify` subcommand's arguments."""
    p = sub.add_parser("verify", help="check an export: file hashes, no custom code, pruned heads zero, probe logits",
                       description="Named checks on a folder written by purify, one line each: files_sha256 (every "
                                   "file matches the hash recorded at export), no_custom_code, safetensors_only, "
                                   "pruned_heads_zero, tokenizer_probe and probe_logits (vanilla transformers "
                                   "reproduces the recorded logits). Exits 2 when any check fails.")
    p.add_argument("dir", help="a folder written by purify")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest absolute logit difference accepted between purify's and vanilla loading (1e-4)")


def _add_invert(sub) -> None:
    """The `invert` subcommand's arguments."""
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


def _add_eval(sub) -> None:
    """The `eval` subcommand's arguments."""
    p = sub.add_parser("eval", help="CACC and ASR of a model on a clean and a triggered file")
    p.add_argument("model_dir", help="a classifier checkpoint folder (a zoo entry's model/ or a purify export)")
    p.add_argument("--clean", required=True, help="clean test file")
    p.add_argument("--triggered", help="triggered test file (samples whose true label is not the target)")
    p.add_argument("--target", help="target label (id or name); read from a zoo manifest when omitted")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle checkpoint (weights only)")


def _add_filter(sub) -> None:
    """The `filter` subcommand's arguments."""
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


def _add_zoo(sub) -> None:
    """The `zoo` subcommand's arguments."""
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


def _add_demo(sub) -> None:
    """The `demo` subcommand's arguments."""
    p = sub.add_parser("demo", help="the main job on the built-in default backdoored model")
    p.add_argument("--strategy", default=None, help="any registered strategy (default: the benchmarked choice)")
    p.add_argument("--filter", default=None, help=f"{_filter_names()} or none "
                   "(default: the benchmarked choice)")
    p.add_argument("--zoo", default=None, help="zoo entry to purify (default minilm-movie-badnets-p10-s0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="strategy option, repeatable")
    p.add_argument("--out", default=None, help="output folder (default runs/demo-<strategy>)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")


def _add_tune(sub) -> None:
    """The `tune` subcommand's arguments."""
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


def _add_report(sub) -> None:
    """The `report` subcommand's arguments."""
    p = sub.add_parser("report", help="re-render a run's plots and print its summary")
    p.add_argument("dir")


def _add_bench(sub) -> None:
    """The `bench` subcommand's arguments."""
    p = sub.add_parser("bench", help="run a benchmark matrix (resumable; finished cells are cached)")
    p.add_argument("--suite", required=True, choices=_suite_names(),
                   help="which matrix: zoo entries, pruning strategies, w2s_distill variants, data filters, "
                        "tune, or the pipeline as a user runs it")
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


def build_parser() -> argparse.ArgumentParser:
    """The whole `purify` parser: global options and one subparser per command (`cli.COMMANDS` runs them)."""
    parser = argparse.ArgumentParser(
        prog="purify",
        description="Purify an already-backdoored transformer checkpoint: filter the task data, remove the "
                    "backdoor with a registered strategy, export a sanitized checkpoint with a report.",
        epilog="Shorthand: `purify MODEL_DIR --strategy rl_prune --data task.jsonl --out sanitized/` = "
               "`purify run ...`",
    )
    parser.add_argument("--version", action="version", version=f"purify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_ls(sub)
    _add_verify(sub)
    _add_invert(sub)
    _add_eval(sub)
    _add_filter(sub)
    _add_zoo(sub)
    _add_demo(sub)
    _add_tune(sub)
    _add_report(sub)
    _add_bench(sub)
    return parser
