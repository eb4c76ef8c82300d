"""retrain_base: the reference row that throws the suspicious weights away and trains the base on filtered data."""
from __future__ import annotations

import pytest

from purify.errors import ConfigError
from purify.evaluate import evaluate_model
from purify.registry import build_strategy
from purify.testing.tiny_task import tiny_backdoored
from strategies.retrain_base import RetrainBase, find_base


def test_training_on_clean_data_from_scratch_leaves_no_backdoor():
    loaded, task = tiny_backdoored()
    before = evaluate_model(loaded.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    result = build_strategy("retrain_base", RetrainBase.fast_options).run(loaded, task.clean_train, task.validation)
    after = evaluate_model(result.model, loaded.tokenizer, task.test_clean, task.test_triggered, task.target)
    assert before.asr > 0.9 and after.asr < 0.2, f"ASR {before.asr:.2f} -> {after.asr:.2f}"
    assert after.cacc > 0.9
    assert result.model.config.id2label == loaded.model.config.id2label
    assert result.extras["base"] == "scratch"


def test_a_base_folder_without_a_config_is_refused_naming_the_option(tmp_path):
    loaded, task = tiny_backdoored()
    with pytest.raises(ConfigError, match=r"base='.*' is neither a packaged base"):
        build_strategy("retrain_base", {"base": str(tmp_path)}).run(loaded, task.clean_train, task.validation)


def test_auto_refuses_a_checkpoint_no_packaged_base_matches():
    loaded, _ = tiny_backdoored()  # a 2-layer BERT: not MiniLM's shape
    with pytest.raises(ConfigError, match="no packaged base matches"):
        find_base(loaded.model, "auto")


def test_refuses_a_generative_checkpoint():
    loaded, task = tiny_backdoored()
    loaded.task = "causal_lm"
    with pytest.raises(ConfigError, match="retrain_base trains sequence classifiers"):
        build_strategy("retrain_base").run(loaded, task.clean_train, task.validation)
