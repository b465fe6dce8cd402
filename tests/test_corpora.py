"""Corpus names: the hf: syntax with split slices and text columns."""

import pytest

from forgetting_laws.measure.config import ConfigError
from forgetting_laws.measure.corpora import parse_hf_name


@pytest.mark.parametrize("name, parsed", [
    ("hf:wikitext:wikitext-103-raw-v1:test", ("wikitext", "wikitext-103-raw-v1", "test", [])),
    ("hf:imdb:train", ("imdb", None, "train", [])),
    ("hf:Open-Orca/OpenOrca:train[:40000]#system_prompt,question,response",
     ("Open-Orca/OpenOrca", None, "train[:40000]", ["system_prompt", "question", "response"])),
    ("hf:RealTimeData/bbc_news_alltime:2024-01:train#title,content",
     ("RealTimeData/bbc_news_alltime", "2024-01", "train", ["title", "content"])),
])
def test_hf_names_parse(name, parsed):
    assert parse_hf_name(name) == parsed


@pytest.mark.parametrize("name", ["hf:wikitext", "hf:a:b:c:d", "hf:x:train#"])
def test_bad_hf_names_show_the_syntax(name):
    with pytest.raises(ConfigError, match=r"expected 'hf:<dataset>\[:<config>\]:<split>\[#<columns>\]'"):
        parse_hf_name(name)
