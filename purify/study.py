"""The optuna study behind `purify tune`: a strategy's knobs sampled from its search space, scored on a canary.

The study is stored in SQLite (`TUNE_DB`) so that an interrupted or finished one resumes: trials an interrupted
run left running are failed and their knobs queued again, and a resumed study's sampler is seeded from its history
so that it does not replay the first run's proposals. Knobs the sampler proposes again reuse their figures.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sqlite3
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from .checkpoint import LoadedModel
from .device import seed_everything
from .errors import ConfigError, PurifyError
from .inference import predict
from .knobs import Knobs, suggest
from .pruning import pruned_heads_of
from .registry import build_strategy

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial
    from torch import nn

    from .canary import Canary
    from .data import TaskData
    from .tune import TuneConfig

TUNE_DB = "tune_study.db"
REPEAT_ROUNDS = 5  # optimize rounds at most: the first, then ones replacing trials that repeated measured knobs
#: exceptions a trial may raise without ending the study (the trial is marked failed, with the message)
TRIAL_ERRORS = (PurifyError, ValueError, RuntimeError, ArithmeticError)
_FIGURES = ("canary_asr", "cacc", "cacc_drop", "feasible", "num_pruned")
_RECORDED = _FIGURES + ("seconds", "origin", "error", "pruned_reason", "canary_asr_lower_bound")


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


def importances(study: optuna.Study, params: list[str]) -> tuple[dict, str | None]:
    """Normalised knob importances for canary ASR and for the CACC drop (optuna's default evaluator)."""
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

        def figure(trial: FrozenTrial, key: str = name) -> float:
            return float(trial.user_attrs.get(key, math.inf))

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(study, params=params, target=figure)
            out[name] = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        except Exception as exc:  # importance estimators refuse degenerate studies; the run must not fail for it
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
    return out, "; ".join(notes) or None


def copy_sqlite(src: Path, dest: Path) -> None:
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


def _trial_record(t: optuna.trial.FrozenTrial) -> dict:
    record = {"number": t.number, "state": t.state.name, "params": dict(t.params)}
    record.update({key: t.user_attrs[key] for key in _RECORDED if key in t.user_attrs})
    return record


# -- the study ----------------------------------------------------------------------------------------------

class Study:
    """The study of `knobs` against `canary`, stored in ``<folder>/tune_study.db``: opening it creates or resumes it,
    `optimize` runs the missing trials and `outcome` chooses the knobs to apply."""

    def __init__(self, folder: Path, knobs: Knobs, canary: Canary, train: TaskData, validation: TaskData, *,
                 tune: TuneConfig, seed: int, log: Callable[[str], None] = print) -> None:
        self.knobs, self.canary, self.train, self.validation = knobs, canary, train, validation
        self.tune, self.seed, self.log = tune, seed, log
        self.constrained = tune.objective == "constrained"
        self.native_constraints = hasattr(optuna.trial.Trial, "set_constraint")  # optuna >= 5; else constraints_func
        self.name = f"{knobs.strategy}-{tune.canary.family}-{tune.objective}-seed{seed}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        folder.mkdir(parents=True, exist_ok=True)
        self.db = folder / TUNE_DB
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{self.db.resolve()}")
        self.study = self._create()
        history = len(self.study.get_trials(deepcopy=False))
        self._retry_interrupted()
        if not history and knobs.defaults:
            self.study.enqueue_trial(knobs.defaults, user_attrs={"origin": "defaults"})
        # a resumed study gets a sampler seeded from its history too: reseeded as in the first run, it would replay
        # that run's random proposals and measure the same knobs again
        self.study = optuna.load_study(study_name=self.name, storage=self.storage, sampler=self._sampler(history),
                                       pruner=optuna.pruners.NopPruner())
        self.resumed_from = len(self.measured())
        self.to_run = max(0, tune.trials - self.resumed_from)
        if history:
            log(f"[purify] resuming study {self.name!r} from {self.db}: {self.resumed_from} knob setting(s) "
                f"measured, {self.to_run} to run")
        triggered = canary.triggered_eval.texts
        self.chunks = [c for c in np.array_split(np.arange(len(triggered)), min(tune.score_chunks, len(triggered)))
                       if len(c)]

    def _create(self) -> optuna.Study:
        """Create the study or load the stored one, refusing one whose canary, options or search space differ."""
        study = optuna.create_study(
            storage=self.storage, study_name=self.name, sampler=optuna.samplers.RandomSampler(seed=self.seed),
            pruner=optuna.pruners.NopPruner(), load_if_exists=True,
            **({"direction": "minimize"} if self.constrained else {"directions": ["minimize"] * 2}),
        )
        canary = self.canary
        planted = {"family": canary.family, "trigger": canary.trigger, "target": canary.target}
        identity = _json_normal({"strategy": self.knobs.strategy, "base_options": self.knobs.options,
                                 "space": self.knobs.space, "canary": planted})
        previous = study.user_attrs.get("identity")
        if previous is not None and previous != identity:
            changed = sorted(k for k in identity if identity[k] != previous.get(k))
            raise ConfigError(f"the study in {self.db} was run with a different {', '.join(changed)} (canary, pinned "
                              "options or search space); its trials cannot be compared; choose another --out")
        if previous is None:
            study.set_user_attr("identity", identity)
        return study

    def _retry_interrupted(self) -> None:
        """Fail the trials an interrupted run left running, and queue their knobs again unless already measured."""
        study_id = self.storage.get_study_id_from_name(self.name)
        for stale in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, stale.number)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            if set(stale.params) == set(self.knobs.space) and _params_key(stale.params) not in self.measured():
                self.study.enqueue_trial(dict(stale.params), user_attrs={"origin": f"retry of trial {stale.number}"})

    def _sampler(self, history: int) -> optuna.samplers.TPESampler:
        """The seeded TPE sampler; the tolerance is a sampler constraint where optuna lacks Trial.set_constraint."""
        kwargs: dict[str, Any] = {}
        if self.constrained and not self.native_constraints:
            tolerance = self.tune.tolerance
            kwargs["constraints_func"] = lambda t: [float(t.user_attrs.get("cacc_drop", 1e9)) - tolerance]
        return optuna.samplers.TPESampler(seed=_resume_seed(self.seed, history),
                                          n_startup_trials=self.tune.startup_trials, **kwargs)

    def measured(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The first finished trial of each knob setting (repeats add no information)."""
        first: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            first.setdefault(_params_key(t.params), t)
        return first

    def _best_feasible_asr(self) -> float | None:
        values = [t.user_attrs["canary_asr"] for t in self.study.get_trials(deepcopy=False,
                                                                           states=(TrialState.COMPLETE,))
                  if "canary_asr" in t.user_attrs and t.user_attrs["cacc_drop"] <= self.tune.tolerance + 1e-9]
        return min(values) if values else None

    def _repeats(self) -> int:
        return sum(str(t.user_attrs.get("origin", "")).startswith("repeat of")
                   for t in self.study.get_trials(deepcopy=False))

    # -- one trial --------------------------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """Run the strategy with the trial's knobs on a copy of the canaried model; its canary ASR (and CACC drop)."""
        params = suggest(trial, self.knobs.space)
        earlier = self.measured().get(_params_key(params))
        if earlier is not None and earlier.state == TrialState.COMPLETE and "canary_asr" in earlier.user_attrs:
            return self._reuse(trial, earlier)
        started = time.time()
        model, num_pruned = self._purify(trial, params)
        tokenizer, clean = self.canary.loaded.tokenizer, self.canary.clean_eval
        cacc = float(np.mean(predict(model, tokenizer, clean.texts) == np.asarray(clean.labels)))
        drop = 100.0 * (self.canary.cacc - cacc)
        feasible = drop <= self.tune.tolerance + 1e-9
        for key, value in (("cacc", cacc), ("cacc_drop", drop), ("feasible", feasible), ("num_pruned", num_pruned)):
            trial.set_user_attr(key, value)
        if self.constrained and self.native_constraints:
            trial.set_constraint("cacc_drop", drop - self.tune.tolerance)
        asr = self._canary_asr(trial, model, feasible, drop, started)
        seconds = round(time.time() - started, 2)
        trial.set_user_attr("canary_asr", asr)
        trial.set_user_attr("seconds", seconds)
        self.log(f"[purify] tune trial {trial.number}: canary ASR {asr:.4f}, CACC drop {drop:+.2f} points"
                 f"{'' if feasible else ' (over tolerance)'}, {seconds:.1f} s, {params}")
        return asr if self.constrained else (asr, drop)

    def _reuse(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> float | tuple[float, float]:
        """The sampler proposed knobs already measured: record the same figures at no cost."""
        for key in _FIGURES:
            trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("origin", f"repeat of trial {earlier.number}")
        trial.set_user_attr("seconds", 0.0)
        if self.constrained and self.native_constraints:
            trial.set_constraint("cacc_drop", earlier.user_attrs["cacc_drop"] - self.tune.tolerance)
        self.log(f"[purify] tune trial {trial.number}: repeats trial {earlier.number}'s knobs; its figures are reused")
        return earlier.values[0] if self.constrained else tuple(earlier.values)

    def _purify(self, trial: optuna.Trial, params: Mapping[str, Any]) -> tuple[nn.Module, int]:
        """The strategy's model for the trial's knobs, and how many heads it pruned; a failure fails the trial."""
        loaded = self.canary.loaded
        try:
            strategy = build_strategy(self.knobs.strategy, {**self.knobs.options, **params, "seed": self.seed})
            model = copy.deepcopy(loaded.model)
            seed_everything(self.seed)
            result = strategy.run(LoadedModel(model=model, tokenizer=loaded.tokenizer, task=loaded.task,
                                              path=loaded.path), self.train, self.validation)
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            self.log(f"[purify] tune trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise
        result.cleanup()  # a trial exports nothing: the strategy's temporary files can go now
        return result.model, sum(len(v) for v in pruned_heads_of(result).values())

    def _canary_asr(self, trial: optuna.Trial, model: nn.Module, feasible: bool, drop: float, started: float) -> float:
        """The canary's ASR on the purified model, scored in chunks; hopeless trials are pruned on the way."""
        best = self._best_feasible_asr() if self.constrained and self.tune.prune else None

        def stop(reason: str, lower: float | None = None) -> None:
            trial.set_user_attr("pruned_reason", reason)
            if lower is not None:
                trial.set_user_attr("canary_asr_lower_bound", lower)
            trial.set_user_attr("seconds", round(time.time() - started, 2))
            self.log(f"[purify] tune trial {trial.number} pruned: {reason}")
            raise optuna.TrialPruned(reason)

        if best is not None and not feasible:
            stop(f"clean accuracy drop {drop:.2f} points breaks the tolerance and a feasible trial exists")
        triggered = self.canary.triggered_eval.texts
        hits = 0
        for step, idx in enumerate(self.chunks):
            preds = predict(model, self.canary.loaded.tokenizer, [triggered[i] for i in idx])
            hits += int((preds == self.canary.target).sum())
            if self.constrained:
                lower = hits / len(triggered)
                trial.report(lower, step)
                if best is not None and lower > best + 1e-12 and step < len(self.chunks) - 1:
                    stop(f"canary ASR is at least {lower:.4f} > best feasible {best:.4f}", lower)
        return hits / len(triggered)

    # -- the whole study -------------------------------------------------------------------------------------

    def optimize(self) -> float:
        """Run the missing trials within the timeout (repeated knobs cost nothing and do not count); the seconds."""
        t0 = time.time()
        to_run, pinned = self.to_run, self.knobs.pinned
        if to_run:
            self.log(f"[purify] tuning {self.knobs.strategy}: {to_run} trial(s) over {', '.join(self.knobs.space)}"
                     + (f" (pinned: {', '.join(pinned)})" if pinned else ""))
        for _round in range(REPEAT_ROUNDS):
            left = None if self.tune.timeout is None else self.tune.timeout - (time.time() - t0)
            if not to_run or (left is not None and left <= 0):
                break
            before = self._repeats()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                self.study.optimize(self.objective, n_trials=to_run, timeout=left, catch=TRIAL_ERRORS)
            to_run = self._repeats() - before
        return time.time() - t0

    def outcome(self) -> dict[str, Any]:
        """Every trial, the chosen one (lowest canary ASR within the tolerance), the Pareto front and the knob
        importances, for the report; PurifyError when no trial finished."""
        records = [_trial_record(t) for t in self.study.get_trials(deepcopy=False)]
        complete = [r for r in records if r["state"] == "COMPLETE" and "canary_asr" in r]
        if not complete:
            errors = sorted({r["error"] for r in records if r.get("error")})
            raise PurifyError(f"no tuning trial finished ({len(records)} tried)"
                              + (f"; errors: {'; '.join(errors[:3])}" if errors else ""))
        chosen, feasible = choose(complete, self.tune.tolerance)
        front = pareto_front({r["number"]: (r["canary_asr"], r["cacc_drop"]) for r in complete})
        weights, note = importances(self.study, list(self.knobs.space))
        if not feasible:
            self.log(f"[purify] warning: no trial kept the clean accuracy drop within {self.tune.tolerance:g} points; "
                     f"applying trial {chosen['number']}, the smallest drop ({chosen['cacc_drop']:.2f} points)")
        self.log(f"[purify] chosen: trial {chosen['number']} (canary ASR {chosen['canary_asr']:.4f}, CACC drop "
                 f"{chosen['cacc_drop']:+.2f} points): {chosen['params']}")
        return {
            "study_name": self.name, "storage": TUNE_DB, "sampler": f"TPESampler(seed={self.seed})",
            "trials": records, "n_trials": len(records), "n_complete": len(complete),
            "n_pruned": sum(r["state"] == "PRUNED" for r in records),
            "n_failed": sum(r["state"] == "FAIL" for r in records), "resumed_from": self.resumed_from,
            "best": {**chosen, "feasible": feasible}, "best_params": dict(chosen["params"]), "feasible": feasible,
            "pareto_front": front, "importances": weights, "importances_note": note,
        }

    def close(self) -> None:
        """Let go of the canaried model and the database, before the final run needs the memory and the file."""
        del self.canary, self.study
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()
