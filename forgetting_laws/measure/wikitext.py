"""Plain text from a MediaWiki XML dump: the standard library's XML parser and a small wikitext cleaner.

Used by the ``wiki-sample`` corpus (:mod:`.corpora`): the shortened English Wikipedia dump that
gensim's wheel ships for its own tests (206 pages, 106 of them articles), a general-domain
stand-in for pre-training data as a replay corpus.

The cleaner keeps running prose and drops what is not prose: comments, ``<ref>`` notes and
other tags, templates (``{{...}}``, nested), tables (``{| ... |}``), files, images and
categories (``[[File:...]]``), interlanguage links; links keep their shown text
(``[[target|text]]`` -> ``text``, ``[url text]`` -> ``text``), headings, bold and italics keep
their words, list markers go. It is a cleaner for a replay corpus, not a wikitext renderer:
infobox values and math are dropped with their templates.

Example
-------
>>> clean_wikitext("'''Anarchism''' is a [[political philosophy|philosophy]]{{sfn|Ward|2004}}.<ref>x</ref>")
'Anarchism is a philosophy.'
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["clean_wikitext", "dump_articles"]

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|pre)[^>]*>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_NON_ARTICLE_LINK = re.compile(r"^(file|image|category|media|[a-z]{2,3}(-[a-z]+)?):", re.I)
# a file caption with unbalanced brackets, a table end whose start sat in a template: whole lines
_LEFTOVER = re.compile(r"^(\[\[(?:file|image):.*|\|\})$", re.M | re.I)
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove every balanced ``open_ ... close`` span, nested ones included (templates, tables)."""
    out, depth, kept = [], 0, 0
    for m in re.finditer(f"{re.escape(open_)}|{re.escape(close)}", text):
        if m.group() == open_:
            if not depth:
                out.append(text[kept:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if not depth:
                kept = m.end()
    if not depth:
        out.append(text[kept:])
    return "".join(out)


def _links(text: str) -> str:
    """``[[target|shown]]`` -> ``shown``, ``[[target]]`` -> ``target``, innermost first; files,
    categories and interlanguage links are dropped whole (with the links of their captions)."""
    while True:
        replaced = _LINK.sub(_link_text, text)
        if replaced == text:
            return text
        text = replaced


def _link_text(m: re.Match) -> str:
    inner = m.group(1)
    return "" if _NON_ARTICLE_LINK.match(inner) else inner.rsplit("|", 1)[-1]


def clean_wikitext(text: str) -> str:
    """The prose of one page of wikitext (see the module docstring), paragraphs kept."""
    text = html.unescape(_COMMENT.sub("", text))
    text = _BLOCK_TAGS.sub("", _REF.sub("", text))
    text = _strip_nested(_strip_nested(text, "{{", "}}"), "{|", "|}")
    text = _LEFTOVER.sub("", _links(text))
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _MAGIC.sub("", _QUOTES.sub("", text))
    text = _LIST.sub("", _HEADING.sub(r"\1", text))
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def dump_articles(path: str | Path, min_chars: int = 200) -> list[str]:
    """The cleaned articles of a ``.xml`` or ``.xml.bz2`` MediaWiki dump, in file order.

    Only the main namespace (``<ns>0</ns>``) is read; redirects and pages with fewer than
    ``min_chars`` characters of prose are left out. Each document is the title, a blank line and
    the prose.
    """
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    docs = []
    with opener(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if _local(elem.tag) != "page":
                continue
            fields = {_local(e.tag): e for e in elem.iter()}
            text = fields["text"].text if "text" in fields else None
            if fields["ns"].text == "0" and "redirect" not in fields and text:
                prose = clean_wikitext(text)
                if len(prose) >= min_chars:
                    docs.append(f"{fields['title'].text}\n\n{prose}")
            elem.clear()  # pages are read one at a time
    return docs


def _local(tag: str) -> str:
    """An XML tag without its namespace: ``{http://...}page`` -> ``page``."""
    return tag.rsplit("}", 1)[-1]
