"""Mode connectivity and sharpness: exact end points, filter normalisation, a known quadratic, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting_laws.cli import main
from forgetting_laws.measure.spec import SweepSpec, load_spec
from forgetting_laws.measure.landscape import (DeltaWSpace, LoraSpace, ascent_sharpness, barriers, eps_sharpness,
                                       eval_functions, filter_normalized, hutchinson_trace, linear_path,
                                       random_direction, rank_correlation)
from forgetting_laws.measure.methods.lora import lora_model
from forgetting_laws.measure.models import load_model
from forgetting_laws.measure.probes import lm_loss
from forgetting_laws.measure.sweep import run_sweep
from forgetting_laws.measure.train import adapter_spec

# ------------------------------------------------------------------------------- filter normalisation


def test_filter_normalised_direction_has_per_filter_the_norm_of_its_weights():
    g = torch.Generator().manual_seed(0)
    weights = {"w": torch.randn(6, 4, generator=g) * torch.arange(1, 7).view(-1, 1),  # rows of unequal norm
               "conv": torch.randn(3, 2, 5, generator=g), "bias": torch.randn(6, generator=g),
               "dead": torch.zeros(2, 3)}
    d = random_direction(weights, torch.Generator().manual_seed(1))
    for name in ("w", "conv"):
        assert torch.allclose(d[name].flatten(1).norm(dim=1), weights[name].flatten(1).norm(dim=1), rtol=1e-6)
    assert not d["bias"].any() and not d["dead"].any()  # biases zeroed (Li et al.), zero rows stay zero
    raw = {"w": torch.randn(6, 4, generator=g)}
    scaled = filter_normalized(raw, {"w": weights["w"]})["w"]
    cos = torch.nn.functional.cosine_similarity(scaled, raw["w"], dim=1)
    assert torch.allclose(cos, torch.ones(6), atol=1e-6)  # only each row's length changes


# ------------------------------------------------------------------------------- a known quadratic


def quadratic(H, center):
    """L(theta) = 1/2 (x - c)^T H (x - c), x = theta['w'] flattened: minimum at c, Hessian H."""
    def loss(theta):
        x = (theta["w"] - center).flatten()
        return 0.5 * x @ (H @ x)
    return loss


@pytest.fixture(scope="module")
def two_minima():
    g = torch.Generator().manual_seed(3)
    n = 4 * 5
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    H_flat = Q @ torch.diag(torch.linspace(0.5, 3.0, n, dtype=torch.float64)) @ Q.T  # dense, SPD
    center = torch.randn(4, 5, generator=g, dtype=torch.float64)
    return center, H_flat, 5.0 * H_flat  # the sharp minimum: five times the curvature


def test_sharpness_measures_order_two_minima_by_their_curvature(two_minima):
    center, H_flat, H_sharp = two_minima
    theta = {"w": center.clone()}
    ref = {"w": center}
    flat, sharp = quadratic(H_flat, center), quadratic(H_sharp, center)
    e_flat = eps_sharpness(flat, theta, ref, eps=0.1, n_directions=6)["eps_sharpness"]
    e_sharp = eps_sharpness(sharp, theta, ref, eps=0.1, n_directions=6)["eps_sharpness"]
    assert 0 < e_flat < e_sharp and e_sharp / e_flat == pytest.approx(5.0, rel=1e-9)  # same directions
    # away from the minimum the one-sided rise carries the gradient term; the symmetric one does not
    off = {"w": center + 0.5}
    for H, loss in ((H_flat, flat), (H_sharp, sharp)):
        at_min = eps_sharpness(loss, theta, ref, eps=0.1, n_directions=6)
        away = eps_sharpness(loss, off, ref, eps=0.1, n_directions=6)
        assert at_min["eps_curvature"] == pytest.approx(at_min["eps_sharpness"], rel=1e-9)
        assert away["eps_curvature"] == pytest.approx(at_min["eps_curvature"], rel=1e-9)
        assert away["eps_sharpness"] != pytest.approx(at_min["eps_sharpness"], rel=1e-3)
    rho = 0.2
    a_flat = ascent_sharpness(flat, theta, rho=rho, steps=30)["ascent_sharpness"]
    a_sharp = ascent_sharpness(sharp, theta, rho=rho, steps=30)["ascent_sharpness"]
    lam = torch.linalg.eigvalsh(H_flat)
    # the worst case in the ball is rho^2 lambda_max / 2 (the top eigenvector); the ascent gets
    # close to it, far above what a random direction of that length sees (rho^2 mean(lambda) / 2)
    assert 0.5 * rho**2 * lam.mean() * 1.1 < a_flat <= 0.5 * rho**2 * lam.max() * (1 + 1e-9)
    assert a_sharp == pytest.approx(5 * a_flat, rel=1e-6)  # H -> 5H leaves g / |g| unchanged


@pytest.mark.parametrize("which", [1, 2])
def test_hutchinson_matches_the_true_hessian_trace(two_minima, which):
    center, H_flat, H_sharp = two_minima
    H = H_flat if which == 1 else H_sharp
    est = hutchinson_trace(quadratic(H, center), {"w": center + 0.3}, n_samples=200, seed=which)
    assert est["hessian_trace"] == pytest.approx(float(torch.trace(H)), rel=0.10)


# ------------------------------------------------------------------------------- paths on a tiny LM


def tiny_peft(rank=2):
    spec = SweepSpec.from_dict({"lora": {"rank": rank}}).expand()[0]
    model, _ = load_model("tiny-random-llama")
    return lora_model(model, spec).eval()


def random_lora(space, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: 0.1 * torch.randn(t.shape, generator=g) for n, t in space.point().items()}


@pytest.fixture(scope="module")
def path_setup():
    model = tiny_peft()
    blocks = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    lora = LoraSpace(model)
    t1, t2 = random_lora(lora, 1), random_lora(lora, 2)
    return model, blocks, lora, t1, t2


def loss_with(model, lora, theta, blocks):
    with torch.no_grad():
        for n, t in theta.items():
            lora.params[n].copy_(t)
    return lm_loss(model, blocks)


def test_lora_path_end_points_are_the_adapters_losses_exactly(path_setup):
    model, blocks, lora, t1, t2 = path_setup
    evals = eval_functions({"held": blocks})
    curve = linear_path(lora, t1, t2, evals, alphas=[0.0, 0.5, 1.0])
    before = lora.point()
    l1, l2 = loss_with(model, lora, t1, blocks), loss_with(model, lora, t2, blocks)
    loss = curve.set_index("alpha")["loss"]
    assert loss[0.0] == l1 and loss[1.0] == l2
    assert loss[0.5] not in (l1, l2)
    loss_with(model, lora, before, blocks)  # restore for the other tests


def test_delta_w_path_end_points_and_midpoint_are_merged_weights(path_setup):
    model, blocks, lora, t1, t2 = path_setup
    dw = DeltaWSpace(model)
    deltas = []
    for t in (t1, t2):
        loss_with(model, lora, t, blocks)
        deltas.append(dw.point())
    l1 = loss_with(model, lora, t1, blocks)
    l2 = loss_with(model, lora, t2, blocks)
    curve = linear_path(dw, deltas[0], deltas[1], eval_functions({"held": blocks}), alphas=[0.0, 0.5, 1.0])
    loss = curve.set_index("alpha")["loss"]
    # the merged adapter computes what the adapter computes, up to float32 rounding of s B A x
    assert loss[0.0] == pytest.approx(l1, rel=1e-5) and loss[1.0] == pytest.approx(l2, rel=1e-5)
    # a = 0.5: a plain base model whose adapted weights are W0 + (Delta W1 + Delta W2) / 2
    base, _ = load_model("tiny-random-llama")
    params = dict(base.named_parameters())
    with torch.no_grad():
        for name, d1 in deltas[0].items():
            plain = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            params[plain].add_(0.5 * d1 + 0.5 * deltas[1][name])
    assert loss[0.5] == lm_loss(base.eval(), blocks)
    # the space restores the model it borrowed
    assert loss_with(model, lora, t2, blocks) == l2


def test_barrier_is_the_peak_above_the_chord():
    curves = pd.DataFrame({"space": "lora", "eval": "e", "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
                           "loss": [1.0, 1.5, 2.5, 2.2, 2.0]})
    b = barriers(curves).iloc[0]
    assert b.barrier == pytest.approx(2.5 - 1.5) and b.alpha_at_max == 0.5
    assert b.valley == pytest.approx(0.0) and b.min_loss == 1.0
    valley = barriers(curves.assign(loss=[1.0, 1.1, 0.9, 1.3, 1.4])).iloc[0]
    assert valley.barrier == pytest.approx(0.0, abs=1e-12)  # never above the chord
    assert valley.valley == pytest.approx(0.9 - 1.2) and valley.alpha_at_min == 0.5 and valley.min_loss == 0.9


def test_rank_correlation_with_bootstrap_ci():
    x = np.arange(8.0)
    perfect = rank_correlation(x, x**2, bootstrap=200)
    assert perfect["spearman_rho"] == pytest.approx(1.0) and perfect["ci_lo"] == pytest.approx(1.0)
    noisy = rank_correlation(x, np.random.default_rng(0).normal(size=8), bootstrap=200)
    assert -1 <= noisy["ci_lo"] <= noisy["spearman_rho"] <= noisy["ci_hi"] <= 1
    with pytest.raises(ValueError, match="at least 3"):
        rank_correlation([1, 2], [1, 2])


# ------------------------------------------------------------------------------- sweeps with saved adapters, CLI


@pytest.fixture(scope="module")
def saved_sweep(tmp_path_factory):
    from conftest import TINY_SPEC

    tmp = tmp_path_factory.mktemp("sweep")
    path = tmp / "tiny.toml"
    path.write_text(TINY_SPEC.format(max_steps=4, ranks=[1, 2, 4]).replace("lr = 1e-2", "lr = 1e-2\nsave_adapter = true"))
    spec = load_spec(path)
    run_sweep(spec, tmp / "runs", progress=False)
    return spec, tmp / "runs"


def test_sweep_keeps_final_adapters_without_changing_run_ids(saved_sweep, tiny_spec_file):
    spec, runs = saved_sweep
    plain = load_spec(tiny_spec_file(max_steps=4, ranks=(1, 2, 4)))
    assert [r.run_id for r in spec.expand()] == [r.run_id for r in plain.expand()]
    for run in spec.expand():
        folder = runs / "_adapters" / run.run_id
        assert (folder / "adapter_model.safetensors").is_file()
        assert adapter_spec(folder).run_id == run.run_id
    assert not (runs / ".checkpoints").exists() or not any((runs / ".checkpoints").iterdir())


def test_cli_connectivity_sharpness_and_correlation(saved_sweep, tmp_path, capsys):
    spec, runs = saved_sweep
    r1, r2, r4 = (runs / "_adapters" / r.run_id for r in spec.expand())
    assert main(["connectivity", str(r1), str(r4), "--out", str(tmp_path / "c"), "--points", "3", "--blocks", "2"]) == 0
    text = capsys.readouterr().out
    assert "no lora path" in text and "barrier" in text  # ranks 1 and 4: Delta W space only
    assert set(pd.read_csv(tmp_path / "c" / "connectivity.csv").space) == {"delta_w"}

    assert main(["sharpness", str(r2), "--out", str(tmp_path / "s"), "--directions", "2", "--ascent-steps", "1",
                 "--hutchinson", "2", "--points", "3", "--curve-directions", "1", "--surface", "3",
                 "--blocks", "2"]) == 0
    table = pd.read_csv(tmp_path / "s" / "sharpness.csv")
    assert list(table.space) == ["lora", "delta_w"]
    assert np.isfinite(table[["eps_sharpness", "ascent_sharpness", "hessian_trace"]].to_numpy()).all()
    assert (tmp_path / "s" / "surface_delta_w.png").is_file() and (tmp_path / "s" / "curve_lora.png").is_file()

    assert main(["sharpness-vs-forgetting", str(runs), "--out", str(tmp_path / "v"), "--directions", "2",
                 "--ascent-steps", "0", "--blocks", "2", "--bootstrap", "50", "--quiet"]) == 0
    corr = json.loads((tmp_path / "v" / "correlation.json").read_text())
    assert corr["n_runs"] == 3 and -1 <= corr["spearman_rho"] <= 1
    assert "Spearman rho(eps_sharpness, forgetting)" in capsys.readouterr().out
    assert (tmp_path / "v" / "sharpness_vs_forgetting.png").is_file()


def test_sharpness_vs_forgetting_needs_saved_adapters(tiny_spec_file, tmp_path, capsys):
    run_sweep(load_spec(tiny_spec_file(max_steps=1, ranks=(1,))), tmp_path / "runs", progress=False)
    assert main(["sharpness-vs-forgetting", str(tmp_path / "runs"), "--out", str(tmp_path / "v")]) == 2
    assert "save_adapter = true" in capsys.readouterr().err
