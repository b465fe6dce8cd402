import os
from pathlib import Path

import pytest

TINY_SPEC = """
[sweep]
name = "tiny"
[model]
name = "tiny-random-llama"
[data]
dataset = "lee-news"
reference = "python-docs"
seq_len = 32
heldout_blocks = 4
reference_blocks = 4
[train]
max_steps = {max_steps}
batch_size = 2
lr = 1e-2
[lora]
rank = 2
[probe]
steps = "log"
every = 4
[grid]
"lora.rank" = {ranks}
"""


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep test caches (token blocks, base targets) out of the user's cache."""
    if "FORGETTING_LAWS_TEST_CACHE" in os.environ:
        os.environ["FORGETTING_LAWS_CACHE"] = os.environ["FORGETTING_LAWS_TEST_CACHE"]
    else:
        os.environ["FORGETTING_LAWS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def tiny_spec_file(tmp_path):
    def make(max_steps=12, ranks=(1, 4), extra=""):
        path = tmp_path / "tiny.toml"
        path.write_text(TINY_SPEC.format(max_steps=max_steps, ranks=list(ranks)) + extra)
        return path

    return make


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


REPO = Path(__file__).resolve().parents[1]
