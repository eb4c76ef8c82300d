"""`purify tune`: choose a strategy's knobs against a planted canary backdoor, then purify with the chosen ones.

1. **Canary.** The clean data (after the filter) is split as `purify run` splits it into training and validation
   data, and a held-out scoring slice is carved from the training part. A random canary trigger is planted into
   a copy of the suspicious model with a short fine-tune on the training part (`purify.canary`); if it does not
   take (ASR >= 90%, clean accuracy kept) tuning stops with a CanaryError. The canaried weights are kept in the
   run folder (``tune_canary.*``) until the export, so a resumed study reuses them instead of planting again.
2. **Search.** An optuna study (seeded TPE sampler, stored in ``<out>/tune_study.db`` so an interrupted or
   finished study resumes) samples the strategy's knobs from its config's ``search_space()``. Each trial runs the
   strategy on a fresh copy of the canaried model and scores it on the scoring slice: the canary's ASR and the
   clean accuracy drop (points, against the canaried model). Objective "constrained" minimises canary ASR subject
   to drop <= tolerance (an optuna constraint); "pareto" minimises both and keeps the Pareto front. Hopeless
   trials are pruned: in constrained mode a trial that breaks the tolerance once a feasible trial exists, or
   whose canary ASR can no longer beat the best feasible trial while its triggered samples are scored in chunks.
3. **Apply.** The chosen knobs run on the *original* model through `purify.pipeline.run_pipeline` (the filter
   result is reused), which exports as `purify run` does; the report gains a ``tune`` block (canary, every trial,
   the choice, the Pareto front, knob importances) and the trade-off and importance plots.

Knobs given with ``--set`` are pinned: they are not searched. No triggered test data is ever looked at; the
canary is the defender's own, planted in clean data.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .canary import CACHE_META, CACHE_WEIGHTS, CanaryConfig, plant_canary
from .checkpoint import LoadedModel
from .data import TaskData, split_samples
from .device import seed_everything
from .errors import ConfigError, PurifyError
from .export import REPORT_FILE
from .inference import predict
from .outputs import check_run_destination
from .pipeline import PipelineConfig, load_inputs, run_filter, run_pipeline
from .pruning import pruned_heads_of
from .registry import StrategyConfig, build_strategy, get_strategy

TUNE_DB = "tune_study.db"
REPEAT_ROUNDS = 5  # optimize rounds at most: the first, then ones replacing trials that repeated measured knobs
OBJECTIVES = ("constrained", "pareto")
SPACE_TYPES = ("int", "float", "categorical")
_SPEC_KEYS = {"int": {"type", "low", "high", "log", "step"}, "float": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}
#: exceptions a trial may raise without ending the study (the trial is marked failed, with the message)
TRIAL_ERRORS = (PurifyError, ValueError, RuntimeError, ArithmeticError)


@dataclass
class TuneConfig:
    """What `purify tune` searches and how.

    trials: distinct knob settings the study should measure in all (a resumed study only runs the missing ones;
    a proposal that repeats measured knobs reuses their figures and does not count).
    timeout: stop starting new trials after this many seconds (None: no limit). tolerance: the largest clean
    accuracy drop (points, on the held-out scoring slice, against the canaried model) a choice may cost.
    objective: "constrained" (minimise canary ASR subject to the tolerance) or "pareto" (both objectives).
    score_fraction: share of the training data held out to score trials. startup_trials: random trials before
    TPE models the space. prune: stop hopeless trials early (constrained objective only). score_chunks: chunks
    the canary's triggered samples are scored in (the pruning checkpoints). canary: how the canary is planted.
    """

    trials: int = 20
    timeout: float | None = None
    tolerance: float = 1.0
    objective: str = "constrained"
    score_fraction: float = 0.2
    startup_trials: int = 5
    prune: bool = True
    score_chunks: int = 4
    canary: CanaryConfig = field(default_factory=CanaryConfig)

    def validate(self) -> None:
        if self.trials < 1:
            raise ConfigError("--trials must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("--timeout must be > 0 seconds")
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ConfigError("--tolerance is a clean accuracy drop in points, >= 0")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if not 0 < self.score_fraction < 0.5:
            raise ConfigError("score_fraction must be in (0, 0.5)")
        if self.startup_trials < 1 or self.score_chunks < 1:
            raise ConfigError("startup_trials and score_chunks must be >= 1")
        self.canary.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- search spaces ------------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_search_space(config_cls: type[StrategyConfig], space: Mapping[str, Any] | None = None) -> dict:
    """Check a config's search space (types known, bounds ordered, log bounds > 0, fields exist); return it.

    Raises ConfigError naming the strategy config and the knob at fault.
    """
    space = config_cls.search_space() if space is None else space
    where = config_cls.__name__
    if not isinstance(space, Mapping):
        raise ConfigError(f"{where}.search_space() must return a dict, got {type(space).__name__}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for name, spec in space.items():
        at = f"{where}.search_space()[{name!r}]"
        if name not in fields:
            raise ConfigError(f"{at}: {where} has no field {name!r}")
        if name == "seed":
            raise ConfigError(f"{at}: the seed is not a knob to tune")
        if not isinstance(spec, Mapping) or spec.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{at}: needs a 'type' of {', '.join(SPACE_TYPES)}")
        kind = spec["type"]
        unknown = set(spec) - _SPEC_KEYS[kind]
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(unknown))} for type {kind!r}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{at}: categorical needs a non-empty list of 'choices'")
            for choice in choices:
                if not (choice is None or isinstance(choice, (bool, int, float, str))):
                    raise ConfigError(f"{at}: choice {choice!r} is not None, bool, int, float or str")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise ConfigError(f"{at}: choices repeat")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not (_is_number(low) and _is_number(high)):
            raise ConfigError(f"{at}: needs numeric 'low' and 'high'")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{at}: int bounds must be integers")
        if low > high:
            raise ConfigError(f"{at}: low {low} > high {high}")
        if not isinstance(spec.get("log", False), bool):
            raise ConfigError(f"{at}: 'log' must be true or false")
        step = spec.get("step")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{at}: a log-scaled range needs low > 0")
        if step is not None:
            if spec.get("log"):
                raise ConfigError(f"{at}: 'step' and 'log' cannot be combined")
            if not (_is_number(step) and step > 0) or (kind == "int" and not isinstance(step, int)):
                raise ConfigError(f"{at}: 'step' must be a positive {'integer' if kind == 'int' else 'number'}")
    return dict(space)


def suggest(trial, space: Mapping[str, Mapping]) -> dict[str, Any]:
    """Ask an optuna trial for one value of every knob in `space`."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        elif kind == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
        else:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return params


def in_space(value: Any, spec: Mapping) -> bool:
    """True when `value` is a point of the knob's range (used to enqueue the defaults as the first trial)."""
    if spec["type"] == "categorical":
        return any(type(value) is type(c) and value == c for c in spec["choices"])
    if isinstance(value, bool) or not _is_number(value):
        return False
    if spec["type"] == "int" and not isinstance(value, int):
        return False
    return spec["low"] <= value <= spec["high"]


# -- choosing -----------------------------------------------------------------------------------------------

def pareto_front(points: Mapping[int, tuple[float, float]]) -> list[int]:
    """Keys of the points no other point dominates (both coordinates minimised)."""
    front = []
    for key, (a, b) in points.items():
        dominated = any(x <= a and y <= b and (x < a or y < b) for k, (x, y) in points.items() if k != key)
        if not dominated:
            front.append(key)
    return sorted(front)


def choose(records: list[dict], tolerance: float) -> tuple[dict, bool]:
    """The finished trial to apply: lowest canary ASR within the tolerance (ties: smaller drop, earlier trial);
    when no trial keeps the tolerance, the one with the smallest drop. Returns (record, feasible)."""
    feasible = [r for r in records if r["cacc_drop"] <= tolerance + 1e-9]
    if feasible:
        return min(feasible, key=lambda r: (r["canary_asr"], r["cacc_drop"], r["number"])), True
    return min(records, key=lambda r: (r["cacc_drop"], r["canary_asr"], r["number"])), False


# -- the run ------------------------------------------------------------------------------------------------

def _check_run_folder(out: Path, overwrite: bool) -> None:
    """`out` holds the study while tuning and the export afterwards; never clobber something else."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is not a folder; choose another --out")
        finished = (out / REPORT_FILE).exists()
        foreign = [p.name for p in out.iterdir() if not p.name.startswith((TUNE_DB, CACHE_META, CACHE_WEIGHTS))]
        if finished and not overwrite:
            raise ConfigError(f"{out} holds a finished export; pass --overwrite to resume its study ({TUNE_DB}) and "
                              "export again, or choose another --out")
        if foreign and not finished and not overwrite:
            raise ConfigError(f"{out} exists and is not a purify tune folder; choose another --out or pass --overwrite")


def _constraint_support():
    """optuna >= 5 takes constraints with Trial.set_constraint; older versions with a sampler constraints_func."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _copy_sqlite(src: Path, dest: Path) -> None:
    """A consistent copy of an SQLite database (the backup API, not a file copy)."""
    source, copy_to = sqlite3.connect(str(src)), sqlite3.connect(str(dest))
    try:
        source.backup(copy_to)
    finally:
        source.close()
        copy_to.close()


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(_json_normal(dict(params)), sort_keys=True)


def _resume_seed(seed: int, history: int) -> int:
    """The sampler seed for a study holding `history` trials: `seed` itself for a new study, else one drawn from
    both (the same study resumed at the same point samples the same knobs)."""
    if not history:
        return seed
    return int.from_bytes(hashlib.sha256(f"purify.tune:{seed}:{history}".encode()).digest()[:4], "big")


def _trial_record(t) -> dict:
    attrs = t.user_attrs
    record = {"number": t.number, "state": t.state.name, "params": dict(t.params)}
    for key in ("canary_asr", "cacc", "cacc_drop", "feasible", "num_pruned", "seconds", "origin", "error",
                "pruned_reason", "canary_asr_lower_bound"):
        if key in attrs:
            record[key] = attrs[key]
    return record


def _importances(study, params: list[str]) -> tuple[dict, str | None]:
    """Normalised knob importances for canary ASR and for the CACC drop (optuna's default evaluator)."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "canary_asr" in t.user_attrs]
    if len(complete) < 2:
        return {}, "needs at least two finished trials"
    out: dict[str, dict] = {}
    notes = []
    for name in ("canary_asr", "cacc_drop"):
        if len({t.user_attrs.get(name) for t in complete}) < 2:
            notes.append(f"{name} is the same in every finished trial")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(
                    study, params=params, target=lambda t, key=name: float(t.user_attrs.get(key, math.inf)))
            out[name] = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        except Exception as exc:  # importance estimators refuse degenerate studies; the run must not fail for it
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
    return out, "; ".join(notes) or None


def run_tune(model_dir: str | Path, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig,
             tune: TuneConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Tune `cfg.strategy`'s knobs against a canary, purify `model_dir` with the chosen ones, export to `out_dir`.

    Returns the saved report (``purify_report.json``), whose ``tune`` block records the study.
    """
    import optuna
    from optuna.trial import TrialState

    tune = tune if tune is not None else TuneConfig()
    cfg.validate()
    tune.validate()
    started = time.time()
    entry = get_strategy(cfg.strategy)
    full_space = validate_search_space(entry.config_cls)
    base = {k: v for k, v in cfg.strategy_options.items() if k != "seed"}
    base_config = entry.config_cls.from_dict({**base, "seed": cfg.seed})  # user options: fail before any work
    pinned = sorted(set(full_space) & set(base))
    space = {k: v for k, v in full_space.items() if k not in base}
    if not space:
        raise ConfigError(f"{cfg.strategy} has no knob left to tune"
                          + (f" (pinned with --set: {', '.join(pinned)})" if pinned else " (empty search space)"))
    out = Path(out_dir)
    _check_run_folder(out, cfg.overwrite)  # created once the canary is planted: a failed canary leaves nothing
    # not an input, writable, and (the study may resume in it) never a folder purify did not write
    check_run_destination(model_dir, data_path, out, dataclasses.replace(cfg, overwrite=True))

    # 1. data and canary
    seed_everything(cfg.seed)
    loaded, data, trusted = load_inputs(model_dir, data_path, cfg)
    t0 = time.time()
    filtered = run_filter(cfg.filter, cfg.filter_options, loaded, data, trusted, seed=cfg.seed)
    filter_seconds = time.time() - t0
    kept = filtered.kept if filtered is not None else data
    if filtered is not None:
        log(f"[purify] filter {cfg.filter}: kept {len(kept)} of {len(data)} samples")
    if trusted is not None:
        train, validation = kept, trusted
    else:  # exactly the split run_pipeline makes, so the knobs are tuned on the data they are applied with
        parts = split_samples(kept.samples, [1 - cfg.val_fraction, cfg.val_fraction], seed=cfg.seed)
        train, validation = TaskData(parts[0], kept.label_names), TaskData(parts[1], kept.label_names)
    parts = split_samples(train.samples, [1 - tune.score_fraction, tune.score_fraction], seed=cfg.seed + 1)
    trial_train, score = TaskData(parts[0], train.label_names), TaskData(parts[1], train.label_names)
    canary = plant_canary(loaded, trial_train, validation=score, config=tune.canary, seed=cfg.seed, log=log,
                          cache_dir=out)
    log(f"[purify] canary {'reused' if canary.reused else 'planted'}: ASR {canary.asr:.4f} "
        f"(floor {canary.asr_original:.4f}), CACC {canary.cacc:.4f} (suspicious model {canary.cacc_original:.4f})")
    del loaded

    # 2. the study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    db = out / TUNE_DB
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    native_constraints = _constraint_support()
    constrained = tune.objective == "constrained"
    sampler_kwargs: dict[str, Any] = {}
    if constrained and not native_constraints:
        sampler_kwargs["constraints_func"] = lambda t: [float(t.user_attrs.get("cacc_drop", 1e9)) - tune.tolerance]
    study_name = f"{cfg.strategy}-{tune.canary.family}-{tune.objective}-seed{cfg.seed}"
    study = optuna.create_study(
        storage=storage, study_name=study_name, sampler=optuna.samplers.RandomSampler(seed=cfg.seed),
        pruner=optuna.pruners.NopPruner(), load_if_exists=True,
        **({"direction": "minimize"} if constrained else {"directions": ["minimize"] * 2}),
    )
    identity = _json_normal({"strategy": cfg.strategy, "base_options": base, "space": space,
                             "canary": {"family": canary.family, "trigger": canary.trigger, "target": canary.target}})
    previous = study.user_attrs.get("identity")
    if previous is not None and previous != identity:
        changed = sorted(k for k in identity if identity[k] != previous.get(k))
        raise ConfigError(f"the study in {db} was run with a different {', '.join(changed)} (canary, pinned options "
                          "or search space); its trials cannot be compared; choose another --out")
    if previous is None:
        study.set_user_attr("identity", identity)
    study_id = storage.get_study_id_from_name(study_name)
    history = len(study.get_trials(deepcopy=False))
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)

    def measured() -> dict[str, Any]:
        """The first finished trial of each knob setting (repeats add no information)."""
        first: dict[str, Any] = {}
        for t in study.get_trials(deepcopy=False, states=finished_states):
            first.setdefault(_params_key(t.params), t)
        return first

    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by an interrupted run
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, stale.number),
                                       TrialState.FAIL)
        if set(stale.params) == set(space) and _params_key(stale.params) not in measured():
            study.enqueue_trial(dict(stale.params), user_attrs={"origin": f"retry of trial {stale.number}"})
    if not history:
        defaults = {k: getattr(base_config, k) for k, spec in space.items() if in_space(getattr(base_config, k), spec)}
        if defaults:
            study.enqueue_trial(defaults, user_attrs={"origin": "defaults"})
    # a resumed study gets a sampler seeded from its history too: reseeded as in the first run, it would replay
    # that run's random proposals and measure the same knobs again
    sampler = optuna.samplers.TPESampler(seed=_resume_seed(cfg.seed, history), n_startup_trials=tune.startup_trials,
                                         **sampler_kwargs)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                              pruner=optuna.pruners.NopPruner())
    resumed_from = len(measured())
    to_run = max(0, tune.trials - resumed_from)
    if history:
        log(f"[purify] resuming study {study_name!r} from {db}: {resumed_from} knob setting(s) measured, "
            f"{to_run} to run")

    tokenizer = canary.loaded.tokenizer
    target = canary.target
    triggered = canary.triggered_eval.texts
    chunks = [c for c in np.array_split(np.arange(len(triggered)), min(tune.score_chunks, len(triggered))) if len(c)]

    def best_feasible_asr() -> float | None:
        values = [t.user_attrs["canary_asr"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if "canary_asr" in t.user_attrs and t.user_attrs["cacc_drop"] <= tune.tolerance + 1e-9]
        return min(values) if values else None

    def objective(trial):
        params = suggest(trial, space)
        earlier = measured().get(_params_key(params))
        if earlier is not None and earlier.state == TrialState.COMPLETE and "canary_asr" in earlier.user_attrs:
            # the sampler proposed knobs already measured: record the same figures at no cost
            for key in ("canary_asr", "cacc", "cacc_drop", "feasible", "num_pruned"):
                trial.set_user_attr(key, earlier.user_attrs[key])
            trial.set_user_attr("origin", f"repeat of trial {earlier.number}")
            trial.set_user_attr("seconds", 0.0)
            if constrained and native_constraints:
                trial.set_constraint("cacc_drop", earlier.user_attrs["cacc_drop"] - tune.tolerance)
            log(f"[purify] tune trial {trial.number}: repeats trial {earlier.number}'s knobs; its figures are reused")
            return earlier.values[0] if constrained else tuple(earlier.values)
        t_start = time.time()
        try:
            strategy = build_strategy(cfg.strategy, {**base, **params, "seed": cfg.seed})
            model = copy.deepcopy(canary.loaded.model)
            seed_everything(cfg.seed)
            result = strategy.run(LoadedModel(model=model, tokenizer=tokenizer, task=canary.loaded.task,
                                              path=canary.loaded.path), trial_train, validation)
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log(f"[purify] tune trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        result.cleanup()  # a trial exports nothing: the strategy's temporary files can go now
        cacc = float(np.mean(predict(result.model, tokenizer, canary.clean_eval.texts)
                             == np.asarray(canary.clean_eval.labels)))
        drop = 100.0 * (canary.cacc - cacc)
        feasible = drop <= tune.tolerance + 1e-9
        trial.set_user_attr("cacc", cacc)
        trial.set_user_attr("cacc_drop", drop)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("num_pruned", sum(len(v) for v in pruned_heads_of(result).values()))
        if constrained and native_constraints:
            trial.set_constraint("cacc_drop", drop - tune.tolerance)
        best = best_feasible_asr() if constrained and tune.prune else None

        def stop(reason: str, lower: float | None = None):
            trial.set_user_attr("pruned_reason", reason)
            if lower is not None:
                trial.set_user_attr("canary_asr_lower_bound", lower)
            trial.set_user_attr("seconds", round(time.time() - t_start, 2))
            log(f"[purify] tune trial {trial.number} pruned: {reason}")
            raise optuna.TrialPruned(reason)

        if best is not None and not feasible:
            stop(f"clean accuracy drop {drop:.2f} points breaks the tolerance and a feasible trial exists")
        hits = 0
        for step, idx in enumerate(chunks):
            preds = predict(result.model, tokenizer, [triggered[i] for i in idx])
            hits += int((preds == target).sum())
            if constrained:
                lower = hits / len(triggered)
                trial.report(lower, step)
                if best is not None and lower > best + 1e-12 and step < len(chunks) - 1:
                    stop(f"canary ASR is at least {lower:.4f} > best feasible {best:.4f}", lower)
        asr = hits / len(triggered)
        seconds = round(time.time() - t_start, 2)
        trial.set_user_attr("canary_asr", asr)
        trial.set_user_attr("seconds", seconds)
        log(f"[purify] tune trial {trial.number}: canary ASR {asr:.4f}, CACC drop {drop:+.2f} points"
            f"{'' if feasible else ' (over tolerance)'}, {seconds:.1f} s, {params}")
        return asr if constrained else (asr, drop)

    def repeats() -> int:
        return sum(str(t.user_attrs.get("origin", "")).startswith("repeat of")
                   for t in study.get_trials(deepcopy=False))

    t0 = time.time()
    if to_run:
        log(f"[purify] tuning {cfg.strategy}: {to_run} trial(s) over {', '.join(space)}"
            + (f" (pinned: {', '.join(pinned)})" if pinned else ""))
    for _round in range(REPEAT_ROUNDS):  # repeated knobs cost nothing, so they do not use up --trials
        left = None if tune.timeout is None else tune.timeout - (time.time() - t0)
        if not to_run or (left is not None and left <= 0):
            break
        before = repeats()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=to_run, timeout=left, catch=TRIAL_ERRORS)
        to_run = repeats() - before
    search_seconds = time.time() - t0

    # 3. choose, record, apply to the original model
    trials = study.get_trials(deepcopy=False)
    records = [_trial_record(t) for t in trials]
    complete = [r for r in records if r["state"] == "COMPLETE" and "canary_asr" in r]
    if not complete:
        errors = sorted({r["error"] for r in records if r.get("error")})
        raise PurifyError(f"no tuning trial finished ({len(records)} tried)"
                          + (f"; errors: {'; '.join(errors[:3])}" if errors else ""))
    chosen, feasible = choose(complete, tune.tolerance)
    front = pareto_front({r["number"]: (r["canary_asr"], r["cacc_drop"]) for r in complete})
    importances, importance_note = _importances(study, list(space))
    if not feasible:
        log(f"[purify] warning: no trial kept the clean accuracy drop within {tune.tolerance:g} points; "
            f"applying trial {chosen['number']}, the smallest drop ({chosen['cacc_drop']:.2f} points)")
    log(f"[purify] chosen: trial {chosen['number']} (canary ASR {chosen['canary_asr']:.4f}, CACC drop "
        f"{chosen['cacc_drop']:+.2f} points): {chosen['params']}")
    summary = {
        "strategy": cfg.strategy, "objective": tune.objective, "tolerance": tune.tolerance,
        "study_name": study_name, "storage": TUNE_DB, "sampler": f"TPESampler(seed={cfg.seed})",
        "config": tune.to_dict(), "search_space": space, "options": base, "pinned": {k: base[k] for k in pinned},
        "canary": canary.summary(),
        "splits": {"train": len(trial_train), "validation": len(validation), "score": len(score),
                   "final_train": len(train)},
        "trials": records, "n_trials": len(records), "n_complete": len(complete),
        "n_pruned": sum(r["state"] == "PRUNED" for r in records),
        "n_failed": sum(r["state"] == "FAIL" for r in records),
        "resumed_from": resumed_from,
        "best": {**chosen, "feasible": feasible}, "best_params": dict(chosen["params"]), "feasible": feasible,
        "pareto_front": front, "importances": importances, "importances_note": importance_note,
        "seconds": {"filter": round(filter_seconds, 2), "canary": round(canary.seconds, 2),
                    "search": round(search_seconds, 2), "total_before_apply": round(time.time() - started, 2)},
    }
    final_cfg = dataclasses.replace(cfg, strategy_options={**base, **chosen["params"]}, overwrite=True)
    # drop the canaried model and the study before the final run; rebinding (not `del`) keeps the names the
    # closures above read defined
    canary = study = trials = None  # type: ignore[assignment]
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        copy_path = Path(tmp) / TUNE_DB
        _copy_sqlite(db, copy_path)
        return run_pipeline(model_dir, data_path, out, final_cfg, log=log, filtered=filtered,
                            report_extra={"tune": summary}, extra_files={TUNE_DB: copy_path})
