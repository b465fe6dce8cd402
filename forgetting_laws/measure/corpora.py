"""Corpus registry: built-in offline corpora, Hugging Face datasets, local files.

A corpus is a list of documents (strings). :func:`token_blocks` tokenises it, packs the
tokens into fixed-length blocks and caches them on disk; :func:`split_blocks` splits them
deterministically into a held-out part and a training part.

Names
-----
``lee-news``            300 ABC news articles shipped in gensim's wheel (located, not imported)
``python-docs``         CPython's reference prose, ``pydoc_data.topics``
``python-source``       CPython's standard-library source code (public top-level modules, ~1 MB)
``hf:<dataset>[:<config>]:<split>[#<columns>]``  any Hugging Face dataset (``pip install datasets``);
                        the split may be sliced (``train[:40000]``); ``#a,b`` joins those text
                        columns into one document (default: ``text``, else the first column)
``/path/file.txt|.jsonl|.parquet``   a local file (one document per line / a ``text`` field)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .models import cache_dir
from ..registry import Registry

__all__ = ["register_corpus", "corpus_names", "check_corpus_name", "parse_hf_name", "load_documents",
           "token_blocks", "split_blocks"]

_CORPORA: Registry[Callable[[], list[str]]] = Registry("corpus")
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")

#: Register a ``loader() -> list[str]`` under a name: ``@register_corpus("my-corpus")``.
register_corpus = _CORPORA.register


def corpus_names() -> list[str]:
    """Registered corpus names (besides ``hf:...`` and local paths)."""
    return _CORPORA.names()


@register_corpus("lee-news")
def _lee_news() -> list[str]:
    spec = importlib.util.find_spec("gensim")  # only its data file is needed, not the library
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("corpus 'lee-news' ships in gensim's wheel; install it with: "
                          "pip install --no-deps gensim")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


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


def _local_documents(path: Path) -> list[str]:
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        return [d.strip() for d in text.split("\n\n") if d.strip()]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["text"] if isinstance(r, dict) else str(r) for r in rows]
    import pandas as pd

    frame = pd.read_parquet(path)
    if "text" not in frame.columns:
        raise ConfigError(f"corpus file {str(path)!r} has no 'text' column; columns: {list(frame.columns)}")
    return [t for t in frame["text"].tolist() if isinstance(t, str) and t.strip()]


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
    """The documents of corpus ``name`` (a registered name, ``hf:...`` or a local file)."""
    check_corpus_name(name, field)
    if name in _CORPORA:
        return _CORPORA[name]()
    if name.startswith("hf:"):
        return _hf_documents(name)
    return _local_documents(Path(name))


def _corpus_key(name: str) -> str:
    path = Path(name)
    if path.suffix in _LOCAL_SUFFIXES and path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return name


def token_blocks(name: str, tokenizer, seq_len: int, tokenizer_id: str,
                 field: str = "data.dataset") -> np.ndarray:
    """Tokenise corpus ``name`` and pack it into blocks of ``seq_len`` tokens, cached on disk.

    Documents are joined with the tokenizer's EOS token between them; the tail that does not
    fill a block is dropped. Returns an int64 array of shape (n_blocks, seq_len).
    """
    key = hashlib.sha1(f"{_corpus_key(name)}|{tokenizer_id}|{seq_len}".encode()).hexdigest()[:16]
    path = cache_dir() / "blocks" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    docs = load_documents(name, field)
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
    return blocks


def split_blocks(blocks: np.ndarray, n_first: int, seed: int, field: str, name: str,
                 min_rest: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle blocks with ``seed`` and return (first ``n_first`` blocks, the rest).

    The split depends only on the corpus, the block length and ``seed``, so two runs that share
    them share their held-out blocks.
    """
    if n_first + min_rest > len(blocks):
        raise ConfigError(
            f"{field} = {n_first}: corpus {name!r} has only {len(blocks)} blocks of this length "
            f"(and {min_rest} are needed besides); lower {field} or data.seq_len, or use a larger corpus"
        )
    order = np.random.default_rng(seed).permutation(len(blocks))
    return blocks[order[:n_first]], blocks[order[n_first:]]
