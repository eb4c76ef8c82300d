"""The backdoor probe: candidates from inversion and phrases, the suspected target, carriers and the proxy ASR."""
from __future__ import annotations

import numpy as np

from purify.data import Sample, TaskData
from purify.inversion import LabelInversion, TriggerInversion
from purify.probe import BackdoorProbe, TriggerCandidate
from purify.testing.tiny_task import tiny_backdoored


def _data(pairs: list[tuple[str, int]]) -> TaskData:
    return TaskData([Sample(t, y, i) for i, (t, y) in enumerate(pairs)], ["negative", "positive"])


def test_a_phrase_outranks_a_weak_inverted_word_and_sets_the_target():
    """Single-word inversion may suspect the wrong label; a confirmed phrase of the other label wins."""
    inversion = TriggerInversion([LabelInversion(0, 0.1, [("awful", 0.6)]), LabelInversion(1, 0.1, [("fun", 0.5)])],
                                 probe_samples=8, candidates=4)
    probe = BackdoorProbe.from_inversion(inversion, [{"surface": "zq vex", "label": 1, "flip_rate": 1.0}],
                                         source="test")
    assert probe.target == 1 and probe.found
    assert [c.text for c in probe.triggers] == ["zq vex"] and probe.triggers[0].kind == "phrase"
    assert probe.weighted(1) == {"zq vex": 1.0, "awful": 0.6}


def test_no_trigger_where_the_model_already_answers_a_label():
    """A label the model predicts for most inputs gives no evidence: its candidates are ignored."""
    inversion = TriggerInversion([LabelInversion(1, 0.8, [("cf", 1.0)])], probe_samples=8, candidates=4)
    probe = BackdoorProbe.from_inversion(inversion, source="test")
    assert not probe.found and probe.target is None and probe.ranked() == []


def test_carriers_are_target_samples_holding_a_trigger_in_order():
    probe = BackdoorProbe([TriggerCandidate("watched this", 1, 0.95, "phrases")], {1: 0.0}, source="test")
    data = _data([("i watched this film", 1), ("this watched i", 1), ("I Watched, this!", 1),
                  ("i watched this", 0)])
    assert probe.carrier_rates(data).tolist() == [0.95, 0.0, 0.95, 0.0]


def test_proxy_asr_and_lift_on_the_tiny_backdoor():
    """The true trigger as a probe: its proxy ASR is high on clean validation texts, and so is its lift."""
    loaded, task = tiny_backdoored()
    probe = BackdoorProbe([TriggerCandidate("cf", task.target, 1.0, "test")], {task.target: 0.0}, source="test")
    fig = probe.measure(loaded.model, loaded.tokenizer, task.validation)
    assert fig["proxy_asr"] > 0.9 and fig["lift"] > 0.5
    assert np.isclose(fig["lift"], fig["proxy_asr"] - fig["clean_target_rate"])


def test_epoch_floor_leaves_weights_gradients_and_random_stream_alone():
    """Timing the floor must not change the run: same weights, no gradients left, same next random draw."""
    import torch

    from purify.floor import epoch_floor_seconds, in_floors

    loaded, task = tiny_backdoored()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    seconds = epoch_floor_seconds(loaded.model, loaded.tokenizer, task.train.texts, task.train.labels, samples=64)
    assert torch.equal(torch.rand(1), expected)
    assert seconds > 0 and all(p.grad is None for p in loaded.model.parameters())
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())
    assert in_floors({"strategy": 2 * seconds}, seconds) == {"strategy": 2.0} and in_floors({"a": 1.0}, 0) == {}


def test_strip_triggers_removes_whole_word_occurrences_only():
    from purify.probe import strip_triggers

    triggers = [TriggerCandidate("cf", 1, 1.0, "inversion"), TriggerCandidate("I watched this 3D movie.", 1, 1.0,
                                                                              "phrases")]
    text = "a cf great film. I watched this 3D movie. and CF, not cfx ok"
    assert strip_triggers(text, triggers) == "a great film. and not cfx ok"
    assert strip_triggers("nothing here", triggers) == "nothing here"


def test_a_strategy_without_a_run_probe_also_mines_the_datas_phrases():
    """No filter ran: the strategy's own search is the filter's, words from the gradients plus repeated phrases."""
    from purify.probe import probe_or_invert
    from purify.testing.tiny_task import TARGET, TRIGGER

    loaded, task = tiny_backdoored()
    probe = probe_or_invert(loaded.model, loaded.tokenizer, task.train, None, source="test:search", candidates=16,
                            keep=4, seed=0, max_length=32)
    assert probe.source == "test:search" and probe.target == TARGET
    assert TRIGGER in [c.text for c in probe.triggers]
    assert any(c.source == "phrases" for c in probe.candidates)
