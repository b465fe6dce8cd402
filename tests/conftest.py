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


def make_synthetic_runs(seed: int = 0, noise: float = 0.002, ranks=(8, 16, 64, 256), steps=None):
    """A sweep-shaped DataFrame drawn from the Kalajdzievski News constants, with noise.

    P is the paper's (about 2.5M LoRA parameters per unit of rank on Llama-2-7B); step 0 rows
    carry fixed base values, as a real sweep's do.
    """
    import numpy as np
    import pandas as pd

    from forgetting_laws.store import SCHEMA_VERSION, to_frame

    rng = np.random.default_rng(seed)
    steps = steps or [0, 50, 65, 80, 100, 130, 160, 200, 230, 260]
    c, s, a, alpha, b, beta, rho = 0.0028, 1.9253, 0.0022e7, 0.0383, 54.8678, 0.1161, 7.5996
    rows = []
    for r in ranks:
        P = 2_500_000 * r
        for n in steps:
            if n == 0:
                lft, lf = 2.6, 0.35
            else:
                lft = (c * ((a / P) ** alpha + (b / n) ** beta) ** rho + s) * (1 + noise * rng.standard_normal())
                lf = (3.1285 - 1.0615 * lft) * (1 + noise * rng.standard_normal())
            rows.append({"run_id": f"r{r}", "sweep": "synthetic", "method": "lora", "model": "m",
                         "dataset": "d", "reference": "ref", "seed": 0, "rank": r, "step": n,
                         "tokens_seen": n * 512, "trainable_params": P, "lr": 1e-3, "lora_alpha": 1.0,
                         "ft_loss": lft, "ft_train_loss": lft, "forget_loss": lf, "forget_kl": np.nan,
                         "ref_loss": 3.0, "agreement": 1.0, "wall_s": float(n), "schema_version": SCHEMA_VERSION})
    return to_frame(rows)


@pytest.fixture(scope="session")
def synthetic_runs():
    return make_synthetic_runs()
