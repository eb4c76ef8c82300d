"""Conformance kit every registered strategy must pass (in the spirit of optuna's ``pytest_samplers``).

Use it from a test module::

    from purify.testing.conformance import StrategyConformance
    class TestMine(StrategyConformance):
        strategy_names = ["my_strategy"]

Each check runs the strategy with its ``fast_options`` on a tiny backdoored BERT: it runs and returns a
well-formed result, is deterministic under a seed, exports a checkpoint that ``verify`` accepts, and keeps
clean validation accuracy within its guard.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from ..export import export_checkpoint, verify
from ..pruning import PruningResult, PruningStrategy, pruned_heads_of, report_summary
from ..registry import StrategyResult, available_strategies, build_strategy
from ..training import accuracy_on
from .tiny_task import TinyTask, tiny_backdoored

if TYPE_CHECKING:
    from ..checkpoint import LoadedModel

#: clean accuracy a strategy may lose on the tiny task, beyond its own guard (the tiny model is coarse)
ACCURACY_TOLERANCE = 0.05


def _run(name: str, seed: int = 0, arch: str = "bert") -> tuple[StrategyResult, LoadedModel, TinyTask]:
    entry = available_strategies()[name]
    loaded, task = tiny_backdoored(arch)
    strategy = build_strategy(name, {**entry.strategy_cls.fast_options, "seed": seed})
    result = strategy.run(loaded, task.clean_train, task.validation)
    result.cleanup()  # the checks below export no strategy files
    return result, loaded, task


class StrategyConformance:
    """Behaviour every strategy promises; subclass and set `strategy_names` (default: every registered one)."""

    strategy_names: ClassVar[list[str] | None] = None

    @classmethod
    def names(cls) -> list[str]:
        return cls.strategy_names if cls.strategy_names is not None else list(available_strategies())

    def pytest_generate_tests(self, metafunc) -> None:
        """Parametrise `strategy_name` over `strategy_names` (pytest calls this hook on test classes)."""
        if "strategy_name" in metafunc.fixturenames:
            metafunc.parametrize("strategy_name", type(self).names())

    def test_runs_and_reports(self, strategy_name: str) -> None:
        result, loaded, task = _run(strategy_name)
        assert isinstance(result, StrategyResult)
        assert result.model is not None
        summary = report_summary(result)
        assert isinstance(summary["num_pruned"], int)
        if isinstance(result, PruningResult):
            assert tuple(result.mask.shape) == tuple(result.head_scores.shape)
            assert torch.isfinite(result.head_scores).all()
            # at least one head kept per layer
            assert bool((result.mask.sum(dim=1) >= 1).all())

    def test_deterministic_under_seed(self, strategy_name: str) -> None:
        first, loaded_a, task = _run(strategy_name, seed=3)
        second, loaded_b, _ = _run(strategy_name, seed=3)
        assert pruned_heads_of(first) == pruned_heads_of(second)
        texts = task.test_clean.texts[:16]
        from ..inference import predict_logits

        a = predict_logits(first.model, loaded_a.tokenizer, texts)
        b = predict_logits(second.model, loaded_b.tokenizer, texts)
        assert abs(a - b).max() < 1e-4

    def test_exports_verified_checkpoint(self, strategy_name: str, tmp_path) -> None:
        result, loaded, _ = _run(strategy_name)
        out = tmp_path / "sanitized"
        outcome = export_checkpoint(result.model, loaded.tokenizer, out, pruned_heads=pruned_heads_of(result),
                                    metadata={"strategy": strategy_name})
        assert outcome.ok
        assert verify(out).ok

    def test_keeps_clean_accuracy(self, strategy_name: str) -> None:
        result, loaded, task = _run(strategy_name)
        reference, _ = tiny_backdoored()
        before = accuracy_on(reference.model, reference.tokenizer, task.validation.texts, task.validation.labels)
        after = accuracy_on(result.model, loaded.tokenizer, task.validation.texts, task.validation.labels)
        guard = float(getattr(build_strategy(strategy_name).config, "max_acc_drop", 0.0))
        assert after >= before - guard - ACCURACY_TOLERANCE, f"clean accuracy fell from {before:.3f} to {after:.3f}"
        if isinstance(result, PruningResult) and result.baseline_val_accuracy is not None:
            # the engine's own guard, on the validation subset it measured
            assert result.final_val_accuracy is not None
            assert result.final_val_accuracy >= result.baseline_val_accuracy - guard - 1e-9

    def test_backdoor_objective_records_a_proxy_it_never_raises(self, strategy_name: str) -> None:
        """A pruning strategy's default (backdoor) objective measures its proxy ASR before and after pruning, and a
        kept mask never leaves the model obeying the trigger more than it did."""
        import pytest

        if not issubclass(available_strategies()[strategy_name].strategy_cls, PruningStrategy):
            pytest.skip(f"{strategy_name} does not prune heads")
        result, _, _ = _run(strategy_name)
        assert isinstance(result, PruningResult)
        extras = result.extras
        assert extras["objective"] == "backdoor"
        assert extras["signal"]["kind"] in ("triggers", "latent")
        if "recovery" not in extras:
            assert extras["proxy_after"] <= extras["proxy_before"]
        assert extras["stop_reason"] in ("proxy at the clean base rate", "patience", "budget", "queue")
