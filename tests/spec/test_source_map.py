import pytest

from engine.spec.source_map import YamlError, interpolate_env, load_yaml


def test_positions_of_keys_and_values() -> None:
    loaded = load_yaml("a: 1\nnodes:\n  x:\n    type: map\n    config: {expr: 'msg'}\n")
    assert loaded.keys[("nodes", "x", "type")].line == 4
    assert loaded.keys[("nodes", "x", "type")].col == 5
    pos = loaded.values[("nodes", "x", "config", "expr")]
    assert (pos.line, pos.col, pos.style) == (5, 20, "'")
    assert loaded.pos(("nodes", "x", "config", "missing")).line == 5  # nearest ancestor


def test_duplicate_keys_are_reported() -> None:
    loaded = load_yaml("nodes:\n  a: 1\n  a: 2\n")
    assert [(p, pos.line) for p, pos in loaded.duplicates] == [(("nodes", "a"), 3)]


def test_syntax_error_has_position() -> None:
    with pytest.raises(YamlError) as info:
        load_yaml("a: [1, 2\nb: 3\n")
    assert info.value.line == 2


def test_env_interpolation_with_defaults_and_missing() -> None:
    missing: list = []
    data = {"url": "nats://${HOST:-localhost}:${PORT}", "x": ["${SET}"], "n": 3}
    out = interpolate_env(data, {"SET": "yes"}, (), missing)
    assert out == {"url": "nats://localhost:${PORT}", "x": ["yes"], "n": 3}
    assert missing == [(("url",), "PORT")]
    assert interpolate_env("${A:-d}", {"A": ""}) == "d"  # ':-' also replaces an empty value
    assert interpolate_env("${A-d}", {"A": ""}) == ""
