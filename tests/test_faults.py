"""Faults and bad input on the tiny model: results are never lost, poisoned or reused when stale.

Kills at chosen moments (``fault_plugin.py``), concurrent sweeps, truncated and foreign files,
an edited corpus, a task YAML that would run code, and a table of bad specs: each error names
the field (or file), and nothing already on disk changes.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY_SPEC
from forgetting_laws import load_runs
from forgetting_laws.cli import main

TESTS = Path(__file__).parent
VALUE_COLS = ["ft_loss", "ft_train_loss", "forget_loss", "ref_loss", "agreement"]


def tiny(tmp_path: Path, max_steps: int = 8, ranks=(1, 2), name: str = "tiny.toml",
         replace: dict[str, str] | None = None) -> Path:
    text = TINY_SPEC.format(max_steps=max_steps, ranks=list(ranks))
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (recursively) with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sweep_process(spec: Path, out: Path, fault: str = "", log: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FORGETTING_LAWS_PLUGINS": "fault_plugin", "FL_FAULT": fault,
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    if log:
        env["FL_RUN_LOG"] = str(log)
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(spec), "--out", str(out), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def table(out: Path) -> pd.DataFrame:
    return load_runs(out).sort_values(["run_id", "step"]).reset_index(drop=True)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert not b.duplicated(["run_id", "step"]).any()
    assert a.run_id.tolist() == b.run_id.tolist() and a.step.tolist() == b.step.tolist()
    for col in VALUE_COLS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep (ranks 1 and 2, 8 steps): (spec path, runs folder, its table)."""
    tmp = tmp_path_factory.mktemp("reference")
    spec = tiny(tmp)
    assert main(["sweep", str(spec), "--out", str(tmp / "runs"), "--quiet"]) == 0
    return spec, tmp / "runs", table(tmp / "runs")


# ------------------------------------------------------------------------------------ kills


@pytest.mark.parametrize("fault", ["kill-after-running-sidecar", "kill-after-checkpoint:4", "kill-after-result",
                                   "kill-after-sidecar"])
def test_a_sweep_killed_at_any_moment_resumes_to_the_uninterrupted_table(reference, tmp_path, fault):
    spec, _, ref = reference
    out = tmp_path / "runs"
    killed = sweep_process(spec, out, fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert_same_table(ref, table(out))
    assert not list((out / ".checkpoints").glob("*/checkpoint-*")), "left-over checkpoints are cleaned"
    assert_same_table(ref, load_runs(out, include_partial=True).sort_values(["run_id", "step"]).reset_index(drop=True))


def test_a_failing_run_is_marked_failed_and_the_others_complete(reference, tmp_path, capsys):
    spec, _, ref = reference
    out = tmp_path / "runs"
    failed = sweep_process(spec, out, "raise-rank:2")
    assert failed.returncode == 1 and "injected fault" in failed.stdout + failed.stderr
    metas = {p.stem: p.read_text() for p in out.glob("_meta/*.json")}
    assert sum('"status": "failed"' in m for m in metas.values()) == 1
    assert sum('"status": "complete"' in m for m in metas.values()) == 1
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0  # the failed run is tried again
    assert_same_table(ref, table(out))


def test_two_sweeps_at_once_compute_each_run_once(tmp_path):
    spec = tiny(tmp_path, max_steps=4, ranks=(1, 2, 3))
    out, log = tmp_path / "runs", tmp_path / "starts.log"
    env = {**os.environ, "FORGETTING_LAWS_PLUGINS": "fault_plugin", "FL_RUN_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "forgetting_laws.cli", "sweep", str(spec), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stdout.read().decode()[-2000:]
    starts = log.read_text().split()
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 3, starts
    assert len(table(out).run_id.unique()) == 3


# ------------------------------------------------------------------------------------ corrupt files


def test_a_truncated_result_is_skipped_by_readers_and_redone_by_the_sweep(reference, tmp_path):
    spec, ref_dir, ref = reference
    out = tmp_path / "runs"
    shutil.copytree(ref_dir, out)
    victim = sorted(out.glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.warns(UserWarning, match=re.escape(victim.name)):
        assert len(load_runs(out).run_id.unique()) == 1
    with pytest.warns(UserWarning, match=f"moved {re.escape(victim.name)} to .*corrupt"):
        assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert_same_table(ref, table(out))
    assert list((out / ".corrupt").glob(victim.name + ".*"))


def test_a_garbage_sidecar_is_named_moved_aside_and_its_run_redone(reference, tmp_path):
    spec, ref_dir, ref = reference
    out = tmp_path / "runs"
    shutil.copytree(ref_dir, out)
    victim = sorted(out.glob("_meta/*.json"))[0]
    victim.write_text("{not json")
    with pytest.warns(UserWarning, match=f"{re.escape(victim.name)}: not a JSON document"):
        assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert_same_table(ref, table(out))


def test_a_truncated_checkpoint_is_moved_aside_and_the_run_starts_again(reference, tmp_path):
    spec, _, ref = reference
    out = tmp_path / "runs"
    assert sweep_process(spec, out, "kill-after-checkpoint:4").returncode == -9
    (ckpt,) = [c for c in (out / ".checkpoints").glob("*/checkpoint-4")]
    weights = ckpt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"{re.escape(str(weights))}.*moved to .*corrupt.*starts again"):
        assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    assert_same_table(ref, table(out))


def test_a_foreign_parquet_in_the_runs_folder_is_skipped_with_its_name(reference, tmp_path):
    _, ref_dir, ref = reference
    out = tmp_path / "runs"
    shutil.copytree(ref_dir, out)
    pd.DataFrame({"x": [1, 2]}).to_parquet(out / "notes.parquet")
    with pytest.warns(UserWarning, match=r"notes.parquet: not a run file of forgetting-laws"):
        assert_same_table(ref, table(out))


# ------------------------------------------------------------------------------------ stale inputs


def test_an_edited_corpus_makes_its_runs_stale_not_reused(tmp_path, capsys):
    corpus = tmp_path / "news.txt"
    text = "\n\n".join(f"Article {i}. " + "The council met on Tuesday to discuss the budget. " * 12
                       for i in range(120))
    corpus.write_text(text)
    spec = tiny(tmp_path, max_steps=4, ranks=(1,), replace={'dataset = "lee-news"': f'dataset = "{corpus}"'})
    out = tmp_path / "runs"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    first = table(out)
    before = snapshot(out)
    corpus.write_text(text.replace("budget", "harvest"))
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "computed from other inputs" in err and "data.dataset changed" in err and "--rerun-stale" in err
    assert snapshot(out) == before
    assert main(["sweep", str(spec), "--out", str(out), "--quiet", "--rerun-stale"]) == 0
    second = table(out)
    assert first.run_id.tolist() == second.run_id.tolist()
    assert not np.allclose(first.ft_loss.iloc[1:], second.ft_loss.iloc[1:])
    assert len(list((out / ".corrupt").iterdir())) == 2  # the stale result and sidecar, kept


# ------------------------------------------------------------------------------------ code in specs


def test_a_task_yaml_that_runs_code_is_refused_without_the_flag(reference, tmp_path, capsys):
    spec, ref_dir, _ = reference
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    marker = tmp_path / "pwned"
    (tasks / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef docs(*a, **k):\n    return []\n")
    (tasks / "evil.yaml").write_text("task: evil_task\ncustom_dataset: !function evil.docs\n"
                                     "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a']\n"
                                     "doc_to_target: 0\n")
    bad = tmp_path / "evil.toml"
    bad.write_text(spec.read_text().replace("[probe]", f'[probe.lm_eval]\ntasks = ["evil_task"]\n'
                                                      f'include_path = "{tasks}"\n[probe]'))
    out = tmp_path / "runs"
    shutil.copytree(ref_dir, out)
    before = snapshot(out)
    assert main(["sweep", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "probe.lm_eval.include_path" in err and "!function" in err and "--trust-task-code" in err
    assert main(["tasks", "--include-path", str(tasks), "--local"]) == 2
    assert "--trust-task-code" in capsys.readouterr().err
    assert not marker.exists() and snapshot(out) == before


# ------------------------------------------------------------------------------------ bad specs

BAD_SPECS = [  # (edit of the tiny spec: old -> new, the field the message must name)
    (("[sweep]", "[bogus]\nx = 1\n[sweep]"), r"unknown section \[bogus\]"),
    (("max_steps = 2", "max_stepz = 2"), r"unknown field train.max_stepz"),
    (("rank = 2", "rank = 0"), r"lora.rank = 0, must be > 0"),
    (("rank = 2", "rank = -3"), r"lora.rank = -3, must be > 0"),
    (("max_steps = 2", "max_steps = -1"), r"train.max_steps = -1, must be > 0"),
    (("max_steps = 2", 'max_steps = "ten"'), r"train.max_steps = 'ten' has type str, expected int"),
    (("lr = 1e-2", "lr = nan"), r"train.lr = nan is not a finite number"),
    (("lr = 1e-2", "lr = inf"), r"train.lr = inf is not a finite number"),
    (("lr = 1e-2", "lr = 0.0"), r"train.lr = 0.0, must be > 0"),
    (("lr = 1e-2", "lr = 1e-2\nwarmup_steps = -1"), r"train.warmup_steps = -1, must be >= 0"),
    (("lr = 1e-2", "lr = 1e-2\nseed = -1"), r"train.seed = -1, must be >= 0"),
    (("seq_len = 32", "seq_len = 32\nsplit_seed = -5"), r"data.split_seed = -5, must be >= 0"),
    (("lr = 1e-2", "lr = 1e-2\nweight_decay = -0.1"), r"train.weight_decay = -0.1, must be >= 0"),
    (("lr = 1e-2", "lr = 1e-2\nmax_grad_norm = -1.0"), r"train.max_grad_norm = -1.0, must be >= 0"),
    (("rank = 2", "rank = 2\nalpha = -1.0"), r"lora.alpha = -1.0, must be > 0"),
    (("rank = 2", "rank = 2\nalpha = nan"), r"lora.alpha = nan is not a finite number"),
    (("rank = 2", "rank = 2\ndropout = 1.0"), r"lora.dropout = 1.0, must be in \[0, 1\)"),
    (("rank = 2", "rank = 2\ntarget_modules = []"), r"lora.target_modules = \[\], use 'all-linear' or a non-empty"),
    (('name = "tiny-random-llama"', 'name = "tiny-random-llama"\ndevice = "tpu"'), r"model.device = 'tpu', use auto"),
    (('name = "tiny-random-llama"', 'name = "tiny-random-llama"\ndtype = "fp8"'), r"model.dtype = 'fp8'; allowed"),
    (("lr = 1e-2", 'lr = 1e-2\noptimizer = "adam"'), r"train.optimizer = 'adam'; allowed values"),
    (("lr = 1e-2", 'lr = 1e-2\ncompile = "yes"'), r"train.compile = 'yes' has type str, expected bool or 'auto'"),
    (('name = "tiny"', 'name = "../../x"'), r"sweep.name = '../../x', must be a plain folder name"),
    (('name = "tiny"', 'name = "/tmp/abs"'), r"sweep.name = '/tmp/abs', must be a plain folder name"),
    ((('[sweep]', 'probe = 3\n[sweep]'), ('[probe]\nsteps = "log"\nevery = 4\n', '')), r"\[probe\] = 3 is not a table"),
    (('"lora.rank" =', '"lora.rnk" ='), r"grid key 'lora.rnk' names no field"),
    (('"lora.rank" = [1]', '"lora.rank" = 4'), r"grid.'lora.rank' = 4 must be a non-empty list"),
    (('"lora.rank" = [1]', '"lora.rank" = []'), r"grid.'lora.rank' = \[\] must be a non-empty list"),
    (('steps = "log"', 'steps = "linear"'), r"probe.steps = 'linear', use 'log'"),
    (('steps = "log"', "steps = [0, 1, 999]"), r"probe.steps lists steps \[999\] beyond train.max_steps = 2"),
    (("every = 4", "every = 0"), r"probe.every = 0, must be > 0"),
    (("seq_len = 32", "seq_len = 0"), r"data.seq_len = 0, must be > 0"),
    (("heldout_blocks = 4", "heldout_blocks = 0"), r"data.heldout_blocks = 0, must be > 0"),
    (("batch_size = 2", "batch_size = 0"), r"train.batch_size = 0, must be > 0"),
    (("[grid]", '[method]\nname = "ewc"\n[grid]'), r"method.name = 'ewc' is not a registered method"),
    (("[grid]", '[method]\nname = "sam"\nrho = -0.1\n[grid]'), r"method.rho = -0.1, must be >= 0"),
    (("[grid]", '[method]\nname = "replay"\nreplay_ratio = 1.5\n[grid]'), r"method.replay_ratio = 1.5, must be in \(0, 1\)"),
    (("[grid]", '[method]\nname = "ilora"\nema = 2.0\n[grid]'), r"method.ema = 2.0, must be in \[0, 1\]"),
    (("[grid]", '[method]\nname = "sam"\nbogus = 1\n[grid]'), r"unknown field method.bogus"),
    (("[probe]", "[probe.lm_eval]\ntasks = []\n[probe]"), r"probe.lm_eval.tasks = \[\], give a non-empty list"),
    (("[sweep]", "[sweep\n"), r"is not valid TOML"),
    # checks that need the model or the corpora (preflight), still before anything is written
    (("rank = 2", 'rank = 2\ntarget_modules = ["nonexistent_proj"]'),
     r"lora.target_modules = \['nonexistent_proj'\]: \['nonexistent_proj'\] match no linear module"),
    (('"lora.rank" = [1]', '"lora.rank" = [100000]'), r"lora.rank = 100000 exceeds the width"),
    (("batch_size = 2", "batch_size = 100000"), r"train.batch_size x train.grad_accum = 100000 blocks per update"),
    (("heldout_blocks = 4", "heldout_blocks = 100000"), r"data.heldout_blocks = 100000: corpus 'lee-news' has only"),
    (('name = "tiny-random-llama"', 'name = "./no-such-model-dir"'), r"model.name = './no-such-model-dir': no such model directory"),
    (('reference = "python-docs"', 'reference = "missing.txt"'), r"data.reference = 'missing.txt': no such file"),
]


@pytest.fixture(scope="module")
def bad_corpora(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("corpora")
    files = {"empty.txt": b"\n\n  \n", "latin1.txt": "caf\xe9 au lait ".encode("latin-1") * 50,
             "notext.jsonl": b'{"content": "no text field"}\n', "broken.jsonl": b'{"text": "ok"}\n{oops\n'}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {name: tmp / name for name in files}


CORPUS_CASES = [("empty.txt", r"holds no text \(0 non-empty documents\)"),
                ("latin1.txt", r"is not UTF-8 text .*save it as UTF-8"),
                ("notext.jsonl", r"line 1: no 'text' field"),
                ("broken.jsonl", r"line 2: not JSON")]


@pytest.fixture(scope="module")
def complete_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("complete")
    good = tiny(tmp, max_steps=2, ranks=(1,))
    assert main(["sweep", str(good), "--out", str(tmp / "runs"), "--quiet"]) == 0
    return good, tmp / "runs"


def _refused(good: Path, out: Path, text: str, match: str, capsys, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    before = snapshot(out)
    assert main(["sweep", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert snapshot(out) == before


@pytest.mark.parametrize("edit, match", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_a_bad_spec_is_refused_naming_the_field_and_nothing_on_disk_changes(complete_runs, edit, match, capsys,
                                                                            tmp_path):
    good, out = complete_runs
    text = good.read_text()
    for old, new in (edit if isinstance(edit[0], tuple) else [edit]):
        assert old in text, old
        text = text.replace(old, new, 1)
    _refused(good, out, text, match, capsys, tmp_path)


@pytest.mark.parametrize("name, match", CORPUS_CASES, ids=[n for n, _ in CORPUS_CASES])
def test_an_unreadable_corpus_is_refused_naming_the_file(complete_runs, bad_corpora, name, match, capsys, tmp_path):
    good, out = complete_runs
    text = good.read_text().replace('dataset = "lee-news"', f'dataset = "{bad_corpora[name]}"')
    _refused(good, out, text, r"data.dataset = '.*" + re.escape(name) + "'.*" + match, capsys, tmp_path)


def test_there_are_at_least_40_bad_input_cases():
    assert len(BAD_SPECS) + len(CORPUS_CASES) >= 40
