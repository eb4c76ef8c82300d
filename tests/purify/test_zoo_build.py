"""A tiny zoo entry builds in seconds, carries a real backdoor, and its manifest rebuilds it exactly."""
import hashlib
import json

import pytest

from purify.inference import MAX_LENGTH
from purify.zoo.build import ZooSpec, build_entry, list_entries, open_entry, spec_from_manifest

SPEC = ZooSpec(base="tiny-bert", dataset="sms", attack="badnets", rate=0.1, seed=0)


@pytest.fixture(scope="module")
def entry(session_cache):
    return build_entry(SPEC)


def test_entry_layout_and_manifest(entry):
    assert (entry.model_dir / "model.safetensors").exists()
    assert (entry.clean_model_dir / "model.safetensors").exists()
    for split in ("train", "validation", "test_clean", "test_triggered"):
        assert entry.data_file(split).exists()
    m = entry.manifest
    assert m["name"] == SPEC.name == "tiny-bert-sms-badnets-p10-s0"
    assert m["counts"]["poisoned"] == round(0.1 * m["counts"]["train"])
    for key in ("spec", "attack", "recipe", "versions", "build_seconds", "peak_rss_mb", "built_at"):
        assert key in m
    assert set(m["metrics"]) == {"backdoored", "clean"}


def test_backdoor_is_real(entry):
    m = entry.manifest["metrics"]
    assert m["backdoored"]["asr"] > m["clean"]["asr"] + 0.15


def test_triggered_file_holds_only_non_target_samples(entry):
    triggered = entry.load("test_triggered")
    assert len(triggered) > 0
    assert all(s.label != entry.target for s in triggered.samples)
    train = entry.load("train")
    poisoned = [s for s in train.samples if s.poisoned]
    assert poisoned and all(s.label == entry.target for s in poisoned)  # dirty-label: relabelled to the target


def test_name_round_trip_and_listing(entry):
    assert ZooSpec.parse(SPEC.name) == SPEC
    assert ZooSpec.parse("minilm-movie-style") == ZooSpec(base="minilm", dataset="movie", attack="style")
    assert SPEC.name in [e.manifest["name"] for e in list_entries()]
    assert open_entry(SPEC.name).path == entry.path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_rebuilds_the_same_entry(entry, tmp_path):
    spec = spec_from_manifest(entry.manifest)
    rebuilt = build_entry(spec, root=tmp_path)
    for split in ("train", "validation", "test_clean", "test_triggered"):
        assert _digest(rebuilt.data_file(split)) == _digest(entry.data_file(split))
    a, b = entry.manifest["metrics"], rebuilt.manifest["metrics"]
    for kind in ("backdoored", "clean"):
        assert a[kind]["cacc"] == b[kind]["cacc"] and a[kind]["asr"] == b[kind]["asr"]
    assert json.loads(json.dumps(spec.__dict__)) == entry.manifest["spec"]


def test_second_attack_reuses_the_clean_reference(entry):
    """The clean reference depends on base, dataset and seed only: a second attack copies it, it is not retrained."""
    other = build_entry(ZooSpec(base="tiny-bert", dataset="sms", attack="insertsent", rate=0.1, seed=0))
    clean = other.manifest["metrics"]["clean"]
    assert clean["reused_from"].startswith("tiny-bert-sms-s0-")
    assert _digest(other.clean_model_dir / "model.safetensors") == _digest(entry.clean_model_dir / "model.safetensors")
    assert clean["cacc"] == entry.manifest["metrics"]["clean"]["cacc"]
    assert clean["train_seconds"] == entry.manifest["metrics"]["clean"]["train_seconds"]


def test_an_interrupted_build_resumes_without_retraining_the_backdoored_model(entry, tmp_path):
    def interrupt(message: str) -> None:
        if "training the clean model" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_entry(SPEC, root=tmp_path, log=interrupt)
    assert not (tmp_path / SPEC.name).exists()  # nothing half-written where the entry belongs
    messages = []
    resumed = build_entry(SPEC, root=tmp_path, log=messages.append)
    assert any("reusing the trained backdoored model" in m for m in messages)
    assert resumed.manifest["metrics"]["backdoored"]["resumed"] is True
    for kind in ("backdoored", "clean"):
        assert resumed.manifest["metrics"][kind]["asr"] == entry.manifest["metrics"][kind]["asr"]
    assert not list((tmp_path / ".partial").iterdir())  # the finished entry took its model along


def test_dataset_training_knobs_override_only_the_named_dataset_on_real_bases():
    from purify.zoo.build import DATASET_TRAINING, RECIPES, recipe_for

    assert recipe_for(ZooSpec(base="minilm", dataset="movie")) is RECIPES["minilm"]
    bbc = recipe_for(ZooSpec(base="minilm", dataset="bbc"))
    assert bbc.train.epochs == DATASET_TRAINING["bbc"]["epochs"] and not bbc.train.keep_best
    assert bbc.train.lr == RECIPES["minilm"].train.lr
    assert recipe_for(ZooSpec(base="tiny-bert", dataset="bbc")) is RECIPES["tiny-bert"]  # CI stays fast
    assert bbc.train.max_length == MAX_LENGTH  # trained on as many tokens as evaluation reads


def test_dataset_attack_params_apply_to_the_named_dataset_and_attack_and_the_spec_wins():
    from purify.zoo.build import attack_params_for

    assert attack_params_for(ZooSpec(dataset="movie", attack="badnets")) == {}
    assert attack_params_for(ZooSpec(dataset="bbc", attack="badnets")) == {"num_triggers": 3}
    assert attack_params_for(ZooSpec(dataset="bbc", attack="insertsent")) == {}
    own = ZooSpec(dataset="bbc", attack="badnets", attack_params={"num_triggers": 2})
    assert attack_params_for(own) == {"num_triggers": 2}
