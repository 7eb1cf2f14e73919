"""The generic registry: decorator, create with option checks, names, metadata, one-line errors."""

from __future__ import annotations

import pytest

from medkd.errors import ConfigError, DataError
from medkd.registry import Registry, signature_options


def _registry() -> Registry:
    reg: Registry = Registry("widget", skip_options=("size",))

    @reg.register("round_big", description="big and round")
    def round_big(size: int, *, colour: str = "red", shiny: bool = False) -> tuple:
        return ("round_big", size, colour, shiny)

    @reg.register("square", description="square")
    class Square:
        def __init__(self, size: int, edge: float = 1.0) -> None:
            self.size, self.edge = size, edge

    return reg


def test_register_create_names_and_meta():
    reg = _registry()
    assert list(reg) == ["round_big", "square"] and len(reg) == 2 and "square" in reg and "nope" not in reg
    assert reg.create("round_big", 3, colour="blue") == ("round_big", 3, "blue", False)
    sq = reg.create("square", 2, edge=0.5)
    assert (sq.size, sq.edge) == (2, 0.5)
    assert reg.names() == ["round_big", "square"] and reg.names("ROUND*") == ["round_big"] and reg.names("x*") == []
    assert reg.meta("square") == {"description": "square"}
    assert reg.options("round_big") == {"colour": "red", "shiny": False}
    assert reg.options("square") == {"edge": 1.0}


def test_unknown_name_and_option_errors_are_one_line_with_nearest():
    reg = _registry()
    with pytest.raises(ConfigError, match=r"^unknown widget 'squre'; did you mean 'square'\?$"):
        reg.create("squre", 1)
    with pytest.raises(ConfigError, match=r"^unknown widget 'zzz'; valid: round_big, square$"):
        reg.lookup("zzz")
    with pytest.raises(ConfigError, match=r"^unknown option for widget 'round_big': 'color'; did you mean 'colour'"):
        reg.create("round_big", 1, color="blue")
    with pytest.raises(ConfigError, match=r"option for widget 'square': 'x'; valid: edge$"):
        reg.check_options("square", {"x": 1})
    empty = Registry("gadget", option_kind="thing", error=DataError)
    with pytest.raises(DataError, match=r"unknown gadget 'a'; valid: \(none\)"):
        empty.lookup("a")


def test_duplicates_and_unregister():
    reg = _registry()
    builder = reg["square"]
    assert reg.add("square", builder, description="again") is builder  # same object: allowed, meta replaced
    assert reg.meta("square") == {"description": "again"}
    with pytest.raises(ValueError, match="widget 'square' is already registered"):
        reg.add("square", lambda size: None)
    reg.unregister("square")
    reg.unregister("square")  # absent: no error
    assert list(reg) == ["round_big"]


def test_meta_view_is_live_and_behaves_as_a_mapping():
    reg = _registry()
    view = reg.meta_view("description")
    assert dict(view) == {"round_big": "big and round", "square": "square"}
    assert view.get("nope") is None and "nope" not in view
    reg.add("tri", lambda size: None, description="three sides")
    assert view["tri"] == "three sides" and len(view) == 3


def test_signature_options_skips_and_marks_required():
    def f(a, b: int = 2, *args, c, d: str = "x", **kw):
        return None

    assert signature_options(f) == {"a": None, "b": 2, "c": None, "d": "x"}
    assert signature_options(f, skip=("a", "c")) == {"b": 2, "d": "x"}
