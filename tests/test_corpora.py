"""Corpus names (the hf: syntax with split slices and text columns) and the wiki-sample corpus."""

import bz2

import pytest

from forgetting_laws.measure.config import ConfigError
from forgetting_laws.measure.corpora import corpus_names, load_documents, parse_hf_name
from forgetting_laws.measure.wikitext import clean_wikitext, dump_articles


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


# ------------------------------------------------------------------------------- wiki-sample


@pytest.mark.parametrize("wikitext, prose", [
    ("'''Bold''' and ''italic''", "Bold and italic"),
    ("a [[target|shown]] b [[plain]] c", "a shown b plain c"),
    ("x{{cite web|url=a|title={{nested|t}}}}y", "xy"),
    ("before<ref name=a>note [[link]]</ref> after<ref name=b />.", "before after."),
    ("<!-- hidden -->kept", "kept"),
    ("[[File:a.jpg|thumb|A [[cat]] caption]]Text", "Text"),
    ("[[Category:Things]][[de:Ding]]Prose", "Prose"),
    ("p\n{| class=wikitable\n|-\n| 1 || {{x}}\n|}\nq", "p\n\nq"),
    ("== History ==\n* one\n# two", "History\none\ntwo"),
    ("see [http://example.org the site] and [http://bare.org]", "see the site and"),
    ("a&nbsp;b &amp; c", "a\xa0b & c"),
])
def test_clean_wikitext_keeps_prose_and_drops_markup(wikitext, prose):
    assert clean_wikitext(wikitext) == prose


def test_dump_articles_reads_main_namespace_without_redirects(tmp_path):
    page = "<page><title>{t}</title><ns>{ns}</ns>{redirect}<revision><text>{text}</text></revision></page>"
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           + page.format(t="Kept", ns=0, redirect="", text="'''Kept''' is " + "prose. " * 40)
           + page.format(t="Gone", ns=0, redirect='<redirect title="Kept" />', text="#REDIRECT [[Kept]]")
           + page.format(t="Talk:Kept", ns=1, redirect="", text="talk " * 100)
           + page.format(t="Short", ns=0, redirect="", text="stub")
           + "</mediawiki>")
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    docs = dump_articles(path)
    assert len(docs) == 1 and docs[0].startswith("Kept\n\nKept is prose.")


def test_wiki_sample_is_clean_general_prose():
    docs = load_documents("wiki-sample")
    assert "wiki-sample" in corpus_names()
    assert len(docs) == 106 and sum(map(len, docs)) > 2_000_000
    assert docs[0].startswith("Anarchism\n\nAnarchism is a political philosophy")
    text = "\n".join(docs)
    for markup in ("{{", "}}", "[[", "]]", "<ref", "{|", "|}", "'''", "&nbsp;"):
        assert markup not in text, markup
