import pytest

from forgetting_laws.measure.corpora import register_corpus
from forgetting_laws.registry import Registry
from forgetting_laws.measure.executors import register_executor


def test_registering_a_name_twice_names_it():
    reg = Registry("thing")
    reg.register("a")(1)
    assert reg.names() == ["a"] and "a" in reg and reg["a"] == 1
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a")(2)
    with pytest.raises(ValueError, match="corpus 'lee-news' is already registered"):
        register_corpus("lee-news")(lambda: [])
    with pytest.raises(ValueError, match="executor 'local' is already registered"):
        register_executor("local")(lambda *a: [])
