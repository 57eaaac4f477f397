import pytest

from kompakt.errors import ConfigError, NotFoundError
from kompakt.registry import Registry


def test_register_get_and_list():
    things = Registry("thing")

    @things.register("b")
    class B:
        """Second thing."""

    @things.register("a", help="First thing.")
    def a():
        return 1

    assert things.names() == ["a", "b"]
    assert things.get("B") is B and "a" in things and len(things) == 2
    assert things.help("b") == "Second thing." and things.help("a") == "First thing."


def test_unknown_name_lists_the_valid_ones():
    things = Registry("backend")
    things.register("onnxruntime")(object)
    with pytest.raises(NotFoundError, match=r"unknown backend 'tvm'; valid backends: onnxruntime"):
        things.get("tvm")


def test_duplicate_and_bad_names_are_refused():
    things = Registry("model")
    things.register("x")(object)
    with pytest.raises(ConfigError, match="registered twice"):
        things.register("x")(object)
    with pytest.raises(ConfigError, match="lowercase"):
        things.register("X")
