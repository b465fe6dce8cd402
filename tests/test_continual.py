"""Continual-learning sequences on the tiny random model: metrics, specs, runs, resume, CLI."""

import numpy as np
import pandas as pd
import pytest

from forgetting_laws.cli import main
from forgetting_laws.measure.config import ConfigError
from forgetting_laws.measure.continual import (COLUMNS, ContinualSpec, _Session, adapter_dir, cl_matrix, cl_metrics,
                                       cl_summary, load_continual, load_continual_spec, run_continual)
from forgetting_laws.measure.corpora import corpus_names, load_documents
from forgetting_laws.measure.train import adapter_spec

TASKS = ["lee-news", "python-docs", "python-source"]
SPEC = """
[sweep]
name = "cl-tiny"
[model]
name = "tiny-random-llama"
[data]
reference = "python-docs"
seq_len = 32
heldout_blocks = 4
reference_blocks = 4
[train]
max_steps = {steps}
batch_size = 2
lr = 1e-2
[lora]
rank = 2
[continual]
tasks = {tasks}
[grid]
"method.name" = {methods}
"""


def spec_file(tmp_path, methods=("lora",), steps=2, tasks=TASKS, name="cl.toml"):
    path = tmp_path / name
    path.write_text(SPEC.format(steps=steps, tasks=list(tasks), methods=list(methods)).replace("'", '"'))
    return path


# ------------------------------------------------------------------------------- metrics


def test_cl_metrics_on_a_hand_made_matrix():
    # R[j][i]: accuracy on task i after training task j (T = 3); b: the base model's accuracy.
    R = [[0.9, 0.2, 0.1],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.95]]
    b = [0.1, 0.15, 0.05]
    m = cl_metrics(R, b)
    assert m["AP"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["BWT"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)  # -0.25
    assert m["FWT"] == pytest.approx(((0.2 - 0.15) + (0.3 - 0.05)) / 2)  # 0.15
    # max over l < T of R[l, i] - R[T, i], for i < T: task 1: 0.9 - 0.5, task 2: 0.8 - 0.7
    assert m["Forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)  # 0.25
    assert cl_metrics(R)["FWT"] is None


def test_cl_metrics_of_losses_are_those_of_the_negated_matrix():
    L = np.array([[1.0, 3.0], [2.5, 1.2]])  # loss on task 1 rose from 1.0 to 2.5: forgetting
    base = np.array([3.0, 3.5])
    m = cl_metrics(L, base, higher_is_better=False)
    assert m == pytest.approx(cl_metrics(-L, -base))
    assert m["BWT"] == pytest.approx(-1.5) and m["Forgetting"] == pytest.approx(1.5)
    assert m["FWT"] == pytest.approx(0.5)  # task 1's training lowered task 2's loss from 3.5 to 3.0
    assert m["AP"] == pytest.approx(-(2.5 + 1.2) / 2)


@pytest.mark.parametrize("matrix, base, match", [
    ([[1.0]], None, r"shape \(1, 1\); expected \(T, T\) with T >= 2"),
    ([[1.0, 2.0]], None, r"shape \(1, 2\)"),
    ([[1.0, 2.0], [3.0, 4.0]], [1.0], r"base has shape \(1,\); expected \(2,\)"),
])
def test_cl_metrics_rejects_bad_shapes(matrix, base, match):
    with pytest.raises(ValueError, match=match):
        cl_metrics(matrix, base)


# ------------------------------------------------------------------------------- specs


BASE = {"model": {"name": "tiny-random-llama"}, "data": {"reference": "python-docs"}}


@pytest.mark.parametrize("raw, match", [
    ({}, r"needs a \[continual\] table with tasks"),
    ({"continual": {"tasks": ["lee-news"]}}, r"continual.tasks = \['lee-news'\]; list two or more distinct"),
    ({"continual": {"tasks": ["a", "a"]}}, r"two or more distinct"),
    ({"continual": {"tasks": TASKS, "order": 1}}, r"unknown field continual.order"),
    ({"continual": {"tasks": TASKS}, "data": {"dataset": "lee-news"}}, r"data.dataset is set in a continual spec"),
    ({"continual": {"tasks": TASKS}, "data": {"reference": "python-docs", "reference_blocks": 4}},
     r"data.reference = 'python-docs' is also a task: set data.reference_blocks = data.heldout_blocks"),
    ({"continual": {"tasks": TASKS}, "method": {"name": "replay", "replay": "python-source"}},
     r"method.replay = 'python-source' is also task 3 of the sequence \(continual.tasks\).*set "
     r"method.allow_replay_overlap = true to do this on purpose"),
    ({"continual": {"tasks": ["lee-news", "python-source"]}, "method": {"name": "ilora", "replay": "python-docs"}},
     r"method.replay = 'python-docs' is also data.reference, the corpus the forgetting probes read"),
    ({"continual": {"tasks": TASKS}, "method": {"name": "distill", "replay": "python-docs"}},
     r"method.replay = 'python-docs' is also"),
])
def test_spec_errors_name_the_field_and_the_fix(raw, match):
    with pytest.raises(ConfigError, match=match):
        ContinualSpec.from_dict({**BASE, **raw})


def test_replay_of_a_task_is_allowed_only_when_asked_for():
    raw = {**BASE, "continual": {"tasks": TASKS}, "data": {"reference": "python-docs", "reference_blocks": 16},
           "method": {"name": "replay", "replay": "python-source", "allow_replay_overlap": True}}
    seq = ContinualSpec.from_dict(raw).sequences()[0]
    assert seq.spec.method.config.replay == "python-source"
    assert ContinualSpec.from_dict({**raw, "method": {"name": "replay"}}).sequences()[0].spec.method.config.replay \
        == "wiki-sample"  # the default: outside every sequence of shipped corpora


def test_grid_gives_one_sequence_per_point_with_stable_ids(tmp_path):
    spec = load_continual_spec(spec_file(tmp_path, methods=("lora", "sam")))
    seqs = spec.sequences()
    assert [s.spec.method.name for s in seqs] == ["lora", "sam"]
    assert [seqs[1].task_spec(k).data.dataset for k in range(3)] == TASKS
    assert seqs[0].sequence_id.startswith("lora-r2-")
    again = load_continual_spec(spec_file(tmp_path, methods=("lora",), name="b.toml")).sequences()[0]
    assert again.sequence_id == seqs[0].sequence_id
    other = load_continual_spec(spec_file(tmp_path, tasks=TASKS[::-1], name="c.toml")).sequences()[0]
    assert other.sequence_id != seqs[0].sequence_id


def test_python_source_corpus_is_registered():
    assert "python-source" in corpus_names()
    docs = load_documents("python-source")
    assert len(docs) > 10 and any("def " in d for d in docs)


# ------------------------------------------------------------------------------- runs


def test_every_method_runs_a_sequence_and_writes_the_documented_table(tmp_path):
    out = tmp_path / "out"
    spec = load_continual_spec(spec_file(tmp_path, methods=("lora", "replay", "ilora", "sam")))
    metas = run_continual(spec, out, progress=False)
    df = load_continual(out)
    assert list(df.columns) == COLUMNS
    assert sorted(df.method.unique()) == ["ilora", "lora", "replay", "sam"]
    for seq, meta in zip(spec.sequences(), metas):
        assert seq.sequence_id == meta["sequence_id"]
        g = df[df.sequence_id == meta["sequence_id"]]
        # base + 3 tasks, each: 3 held-out losses + 3 reference metrics
        assert len(g) == 4 * 6 and sorted(g.after_task.unique()) == [0, 1, 2, 3]
        R, base, tasks = cl_matrix(g)
        assert tasks == TASKS and np.isfinite(R).all() and np.isfinite(base).all()
        assert meta["metrics"] == pytest.approx(cl_metrics(R, base, higher_is_better=False))
        assert "negated losses" in meta["sign_convention"]
        assert (R[0, 0] < base[0]) and (R[2, 2] < base[2])  # each task's training lowers its own loss
        for k in range(1, 4):
            path = adapter_dir(out, seq, k)
            assert (path / "adapter_model.safetensors").is_file()
            assert adapter_spec(path).data.dataset == TASKS[k - 1]
    summary = cl_summary(df)
    assert set(summary.columns) >= {"method", "AP", "BWT", "FWT", "Forgetting", "dL_f"}
    assert len(summary) == 4
    assert not list(out.glob(".resume/*")) and not list(out.glob(".*.parquet"))


@pytest.mark.parametrize("method", ["lora", "ilora"])
def test_interrupted_sequence_resumes_to_the_uninterrupted_result(method, tmp_path, monkeypatch):
    spec = load_continual_spec(spec_file(tmp_path, methods=(method,)))
    whole = load_continual(_run(spec, tmp_path / "whole"))

    train_task = _Session.train_task

    def crash_on_third(self, k, work, on_step=None):
        if k == 2:
            raise KeyboardInterrupt("killed")
        return train_task(self, k, work, on_step)

    monkeypatch.setattr(_Session, "train_task", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_continual(spec, tmp_path / "cut", progress=False)
    monkeypatch.setattr(_Session, "train_task", train_task)
    calls = []
    monkeypatch.setattr(_Session, "train_task", lambda self, k, *a, **kw: calls.append(k) or train_task(self, k, *a, **kw))
    resumed = load_continual(_run(spec, tmp_path / "cut"))
    assert calls == [2]  # tasks 1 and 2 were not trained again
    cols = ["after_task", "eval_task", "metric", "value"]
    pd.testing.assert_frame_equal(whole[cols], resumed[cols], atol=1e-6, rtol=0)
    run_continual(spec, tmp_path / "cut", progress=False)
    assert calls == [2]  # a finished sequence is skipped


def _run(spec, out):
    run_continual(spec, out, progress=False)
    return out


def test_cli_prints_matrix_metrics_and_sign_convention_and_draws(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["continual", str(spec_file(tmp_path, steps=1)), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "after / on" in text and "BWT = " in text and "FWT = " in text and "Forgetting = " in text
    assert "negated losses" in text
    assert (out / "figures" / "cl_metrics.png").is_file() and list((out / "figures").glob("cl_matrix_*.png"))
    assert set(pd.read_csv(out / "cl_summary.csv").method) == {"lora"}


def test_cli_reports_spec_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname = "tiny-random-llama"\n')
    assert main(["continual", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "needs a [continual] table" in capsys.readouterr().err
