"""Every notebook runs top to bottom on the committed demo results."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Notebooks that train: run on the tiny random model here, and marked slow.
TRAINING = {"continual_landscape"}


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "fitting.ipynb", "paper_figures.ipynb",
                                           "continual_landscape.ipynb"}
    assert (REPO / "examples" / "demo-runs").is_dir()


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in TRAINING else p
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("FORGETTING_LAWS_BOOTSTRAP", "30")
    monkeypatch.setenv("FORGETTING_LAWS_NB_MODEL", "tiny-random-llama")
    monkeypatch.setenv("FORGETTING_LAWS_NB_OUT", str(tmp_path / "nb-out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
