"""Corpus registry: built-in offline corpora, Hugging Face datasets, local files.

A corpus is a list of documents (strings). :func:`token_blocks` tokenises it, packs the
tokens into fixed-length blocks and caches them on disk; :func:`split_blocks` splits them
deterministically into a held-out part and a training part.

Names
-----
``lee-news``            300 ABC news articles shipped in gensim's wheel (located, not imported)
``wiki-sample``         106 English Wikipedia articles (2.9 M characters of prose) from the shortened
                        dump in gensim's wheel, wikitext markup stripped (:mod:`.wikitext`); a
                        general-domain stand-in for pre-training data as a replay corpus
``python-docs``         CPython's reference prose, ``pydoc_data.topics``
``python-source``       CPython's standard-library source code (public top-level modules, ~1 MB)
``hf:<dataset>[:<config>]:<split>[#<columns>]``  any Hugging Face dataset (``pip install datasets``);
                        the split may be sliced (``train[:40000]``); ``#a,b`` joins those text
                        columns into one document (default: ``text``, else the first column)
``/path/file.txt|.jsonl|.parquet``   a local file (one document per line / a ``text`` field)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..cache import cache_dir
from ..errors import ConfigError
from ..registry import Registry

__all__ = ["register_corpus", "corpus_names", "check_corpus_name", "parse_hf_name", "load_documents",
           "documents_fingerprint", "token_blocks", "split_blocks"]

_CORPORA: Registry[Callable[[], list[str]]] = Registry("corpus")
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")

#: Register a ``loader() -> list[str]`` under a name: ``@register_corpus("my-corpus")``.
register_corpus = _CORPORA.register


def corpus_names() -> list[str]:
    """Registered corpus names (besides ``hf:...`` and local paths)."""
    return _CORPORA.names()


def _gensim_test_file(corpus: str, name: str) -> Path:
    """A data file of gensim's wheel, located without importing gensim."""
    spec = importlib.util.find_spec("gensim")  # only its data file is needed, not the library
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"corpus {corpus!r} ships in gensim's wheel; install it with: "
                          "pip install --no-deps gensim")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / name


@register_corpus("lee-news")
def _lee_news() -> list[str]:
    path = _gensim_test_file("lee-news", "lee_background.cor")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


#: The shortened English Wikipedia dump gensim ships for its tests (206 pages).
WIKI_SAMPLE_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@register_corpus("wiki-sample")
def _wiki_sample() -> list[str]:
    return list(_wiki_articles())


@functools.cache
def _wiki_articles() -> tuple[str, ...]:
    from .wikitext import dump_articles

    return tuple(dump_articles(_gensim_test_file("wiki-sample", WIKI_SAMPLE_FILE)))  # parsed once per process


@register_corpus("python-docs")
def _python_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


_HF_NAME = re.compile(r"hf:(?P<dataset>[^:#\[]+)(?::(?P<config>[^:#\[]+))?:(?P<split>[^:#\[]+(?:\[[^\]]*\])?)"
                      r"(?:#(?P<columns>[^#]+))?")


def parse_hf_name(name: str) -> tuple[str, str | None, str, list[str]]:
    """``hf:<dataset>[:<config>]:<split>[#<col>,<col>]`` -> (dataset, config, split, columns).

    Example
    -------
    >>> parse_hf_name("hf:Open-Orca/OpenOrca:train[:1000]#question,response")
    ('Open-Orca/OpenOrca', None, 'train[:1000]', ['question', 'response'])
    """
    m = _HF_NAME.fullmatch(name)
    if not m:
        raise ConfigError(f"corpus {name!r}: expected 'hf:<dataset>[:<config>]:<split>[#<columns>]', "
                          "e.g. 'hf:Salesforce/wikitext:wikitext-103-raw-v1:test' or "
                          "'hf:Open-Orca/OpenOrca:train[:40000]#question,response'")
    columns = [c.strip() for c in (m["columns"] or "").split(",") if c.strip()]
    return m["dataset"], m["config"], m["split"], columns


#: Characters of stdlib source taken by ``python-source`` (whole files, in name order).
PYTHON_SOURCE_CHARS = 1_000_000


@register_corpus("python-source")
def _python_source() -> list[str]:
    import sysconfig

    # Public top-level modules only (no tests, no private helpers), whole files in name order,
    # so the corpus is the same for every run on one Python version.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith("_") or total >= PYTHON_SOURCE_CHARS:
            continue
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        docs.append(text)
        total += len(text)
    return docs


def _hf_documents(name: str) -> list[str]:
    dataset, config, split, columns = parse_hf_name(name)
    if importlib.util.find_spec("datasets") is None:
        raise ImportError(f"corpus {name!r} needs the 'datasets' package: pip install datasets")
    import datasets

    ds = datasets.load_dataset(dataset, config, split=split)
    columns = columns or ["text" if "text" in ds.column_names else ds.column_names[0]]
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ConfigError(f"corpus {name!r}: no column {missing[0]!r}; columns: {', '.join(ds.column_names)}")
    rows = zip(*(ds[c] for c in columns))
    docs = ("\n\n".join(t for t in row if isinstance(t, str) and t.strip()) for row in rows)
    return [d for d in docs if d.strip()]


def _local_documents(path: Path, field: str) -> list[str]:
    where = f"{field} = {str(path)!r}"
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if "text" not in frame.columns:
            raise ConfigError(f"{where}: the parquet file has no 'text' column; columns: {list(frame.columns)}")
        return [t for t in frame["text"].tolist() if isinstance(t, str) and t.strip()]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    if path.suffix == ".txt":
        return [d.strip() for d in text.split("\n\n") if d.strip()]
    return _jsonl_documents(text, where)


def _jsonl_documents(text: str, where: str) -> list[str]:
    """One document per line: a JSON object's ``text`` field, or a JSON string."""
    docs = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}, line {i}: not JSON ({exc.msg}); write one JSON object per line") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            docs.append(row["text"])
        elif isinstance(row, str):
            docs.append(row)
        else:
            raise ConfigError(f"{where}, line {i}: no 'text' field holding a string; write one object per line "
                              'such as {"text": "..."}')
    return [d for d in docs if d.strip()]


def check_corpus_name(name: str, field: str = "data.dataset") -> None:
    """Check a corpus name without loading anything (dry-runs): raise :class:`ConfigError` if bad."""
    if name in _CORPORA:
        return
    if name.startswith("hf:"):
        parse_hf_name(name)
        return
    if Path(name).suffix in _LOCAL_SUFFIXES:
        if not Path(name).is_file():
            raise ConfigError(f"{field} = {name!r}: no such file")
        return
    raise ConfigError(
        f"{field} = {name!r} is not a known corpus; use one of {', '.join(corpus_names())}, "
        f"'hf:<dataset>[:<config>]:<split>', or a local {'/'.join(_LOCAL_SUFFIXES)} file"
    )


def load_documents(name: str, field: str = "data.dataset") -> list[str]:
    """The documents of corpus ``name`` (a registered name, ``hf:...`` or a local file).

    Raises :class:`ConfigError` naming ``field`` when the corpus cannot be read or holds no text.
    """
    check_corpus_name(name, field)
    if name in _CORPORA:
        docs = _CORPORA[name]()
    elif name.startswith("hf:"):
        docs = _hf_documents(name)
    else:
        docs = _local_documents(Path(name), field)
    if not docs:
        raise ConfigError(f"{field} = {name!r} holds no text (0 non-empty documents); point it at a corpus with text")
    return docs


def documents_fingerprint(docs: list[str]) -> str:
    """A content hash of a corpus: its documents, in order (what a run's identity records)."""
    h = hashlib.blake2b(digest_size=16)
    for doc in docs:
        data = doc.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def token_blocks(name: str, tokenizer, seq_len: int, tokenizer_id: str,
                 field: str = "data.dataset") -> tuple[np.ndarray, str]:
    """Tokenise corpus ``name`` and pack it into blocks of ``seq_len`` tokens, cached on disk.

    Documents are joined with the tokenizer's EOS token between them; the tail that does not
    fill a block is dropped. Returns the blocks, an int64 array (n_blocks, seq_len), and the
    corpus's content fingerprint (:func:`documents_fingerprint`). The cache is keyed by the
    content, so an edited file or another Python's docs are tokenised afresh.
    """
    docs = load_documents(name, field)
    fingerprint = documents_fingerprint(docs)
    key = hashlib.sha1(f"{fingerprint}|{tokenizer_id}|{seq_len}".encode()).hexdigest()[:16]
    path = cache_dir() / "blocks" / f"{key}.npy"
    if path.exists():
        return np.load(path), fingerprint
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for ids_doc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(ids_doc)
        ids.append(eos)
    n = len(ids) // seq_len
    blocks = np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)  # (n_blocks, T)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, blocks)
    os.replace(tmp, path)
    return blocks, fingerprint


def split_blocks(blocks: np.ndarray, n_first: int, seed: int, field: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle blocks with ``seed`` and return (first ``n_first`` blocks, the rest).

    The split depends only on the corpus, the block length and ``seed``, so two runs that share
    them share their held-out blocks.
    """
    if n_first > len(blocks):
        raise ConfigError(
            f"{field} = {n_first}: corpus {name!r} has only {len(blocks)} blocks of this length; "
            f"lower {field} or data.seq_len, or use a larger corpus")
    order = np.random.default_rng(seed).permutation(len(blocks))
    return blocks[order[:n_first]], blocks[order[n_first:]]
