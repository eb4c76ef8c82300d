"""The generic Registry: registration, one-line errors, lazy "module:Obj" entries and entry-point groups."""
from importlib import metadata

import pytest

from purify.errors import ConfigError
from purify.registry_base import Registry


def test_register_get_and_names():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    assert reg.get("a") == 1 and reg["b"] == 2 and reg.names() == ["a", "b"] and list(reg) == ["b", "a"]
    assert "a" in reg and len(reg) == 2 and reg.get("zzz", None) is None
    with pytest.raises(ConfigError) as err:
        reg.get("zzz")
    assert str(err.value) == "unknown widget 'zzz'; known widgets: a, b"
    with pytest.raises(KeyError):
        reg["zzz"]


def test_same_object_again_is_a_no_op_and_a_clash_is_refused():
    reg: Registry[type] = Registry("thing")
    reg.register("x", int)
    reg.register("x", int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", str)


def test_identity_decides_what_counts_as_the_same_registration():
    reg: Registry[tuple] = Registry("pair", identity=lambda pair: pair[0])
    reg.register("p", (int, "first"))
    reg.register("p", (int, "second"))  # same identity: replaced, no error
    assert reg["p"] == (int, "second")
    with pytest.raises(ValueError):
        reg.register("p", (str, "other"))


def test_lazy_entries_import_on_first_use():
    reg: Registry = Registry("codec")
    reg.register_lazy("json_dumps", "json:dumps")
    import json

    assert reg.get("json_dumps") is json.dumps
    with pytest.raises(ValueError, match="module:Obj"):
        reg.register_lazy("bad", "json.dumps")


def test_entry_point_group_loads_once_and_a_broken_plugin_only_warns(monkeypatch):
    eps = [metadata.EntryPoint("dumps", "json:dumps", "g"), metadata.EntryPoint("broken", "no_such_module_x", "g")]
    calls = []

    def fake(group):
        calls.append(group)
        return eps

    monkeypatch.setattr(metadata, "entry_points", fake)
    reg: Registry = Registry("plugin", group="g")
    with pytest.warns(UserWarning, match="'broken'"):
        names = reg.names()
    import json

    assert names == ["dumps"] and reg["dumps"] is json.dumps and reg.names() == ["dumps"] and calls == ["g"]
