"""Each figure draws what it should: artists present, axes labelled, log scales where intended."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

from forgetting_laws.analyse import plots  # noqa: E402
from forgetting_laws.analyse.fit import fit, holdout_mask  # noqa: E402

PN = {"P": "trainable_params", "N": "step"}


@pytest.fixture(scope="module")
def fits(synthetic_runs):
    from conftest import make_synthetic_runs

    df = synthetic_runs
    six_runs = make_synthetic_runs(ranks=(4, 8, 16, 64, 128, 256))  # enough runs for a cluster bootstrap
    return {
        "il": fit(df[df.step > 0], "inverse_linear", x={"L_ft": "ft_loss"}, y="forget_loss", bootstrap=50),
        "ft": fit(df, "kalajdzievski_ft", x=PN, y="ft_loss", min_step=1, bootstrap=0),
        "lf": fit(six_runs, "kalajdzievski_forget", x=PN, y="forget_loss", min_step=1, bootstrap=30),
        "hold": fit(df, "kalajdzievski_forget", x=PN, y="forget_loss", min_step=1, bootstrap=0,
                    holdout="rank:largest"),
    }


def test_forgetting_vs_ft(synthetic_runs, fits):
    df = synthetic_runs[synthetic_runs.step > 0]
    ax = plots.forgetting_vs_ft(df, fits["il"])
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == df["rank"].nunique()
    assert sum(len(c.get_offsets()) for c in scatters) == len(df)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2, "the prediction interval and the band of the mean line"
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"95% prediction interval", "95% band of the mean"}
    assert len(ax.lines) == 1 and "L_{ft}" in ax.get_xlabel() and "L_f" in ax.get_ylabel()
    assert any("R^2" in t.get_text() for t in ax.texts)
    plt.close("all")


@pytest.mark.parametrize("metric, key", [("ft_loss", "ft"), ("forget_loss", "lf")])
def test_trajectories(synthetic_runs, fits, metric, key):
    ax = plots.trajectories(synthetic_runs, fits[key], metric)
    n_ranks = synthetic_runs["rank"].nunique()
    assert len(ax.lines) == 2 * n_ranks  # measured points + fitted curve per rank
    assert ax.get_xscale() == "log" and ax.get_ylabel() == plots.LABELS[metric]
    measured = ax.lines[0].get_xydata()
    assert (measured[:, 0] > 0).all()
    fitted = ax.lines[1].get_ydata()
    assert np.isfinite(fitted).all()
    plt.close("all")


def test_forgetting_map(synthetic_runs, fits):
    ax = plots.forgetting_map(fits["lf"], synthetic_runs[synthetic_runs.step > 0])
    assert ax.get_xscale() == "log"
    assert "P" in ax.get_xlabel() and "N" in ax.get_ylabel()
    runs = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(runs[-1].get_offsets()) == synthetic_runs.run_id.nunique()
    assert len(ax.figure.axes) == 2  # the map and its colour bar
    plt.close("all")


def test_extrapolation(synthetic_runs, fits):
    rows = synthetic_runs[synthetic_runs.step > 0].reset_index(drop=True)
    mask = holdout_mask(rows, "rank:largest")
    ax = plots.extrapolation(fits["hold"], rows, mask)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters[0].get_offsets()) == (~mask).sum()
    assert len(scatters[1].get_offsets()) == mask.sum()
    assert "ARE" in ax.get_title()
    plt.close("all")


def test_residuals_and_bootstrap(fits):
    ax = plots.residuals(fits["lf"])
    assert len(ax.collections[0].get_offsets()) == fits["lf"].metrics["n"]
    axes = plots.bootstrap_params(fits["lf"])
    assert [a.get_xlabel() for a in axes] == ["alpha_f", "beta_f", "rho"]
    assert all(len(a.patches) >= 30 for a in axes)
    with pytest.raises(ValueError, match="no bootstrap draws"):
        plots.bootstrap_params(fits["ft"])
    plt.close("all")


def test_save_writes_png_and_pdf(tmp_path, synthetic_runs, fits):
    paths = plots.save(plots.forgetting_vs_ft(synthetic_runs, fits["il"]), tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_downstream_figures(synthetic_runs):
    df = synthetic_runs.copy()
    probed = df.step.isin([0, 100, 260])
    df["lmeval_fl_arc_mini_acc"] = (0.5 - 0.1 * df["forget_loss"]).where(probed)
    df["lmeval_fl_arc_mini_agree"] = (1.3 - 0.5 * df["forget_loss"]).where(probed)
    df["refusal_rate"] = 0.4
    assert plots.downstream_columns(df) == ["lmeval_fl_arc_mini_acc", "lmeval_fl_arc_mini_agree", "refusal_rate"]
    axes = plots.downstream_over_steps(df)
    assert len(axes) == 3 and "agreement" in axes[1].get_title()
    assert len(axes[0].lines) == df["run_id"].nunique()
    assert all(len(line.get_xdata()) == 3 for line in axes[0].lines)  # NaN steps skipped
    (ax,) = plots.agreement_vs_forgetting(df)
    assert sum(len(c.get_offsets()) for c in ax.collections) == probed.sum()
    with pytest.raises(ValueError, match=r"add \[probe.lm_eval\]"):
        plots.agreement_vs_forgetting(synthetic_runs)
    plt.close("all")


def test_forgetting_map_marks_the_measured_region_and_the_base_model(synthetic_runs, fits):
    from matplotlib.patches import Rectangle

    ax = plots.forgetting_map(fits["lf"], synthetic_runs[synthetic_runs.step > 0], base=0.35)
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and "measured region" in str(p.get_label())]
    (box,) = boxes
    P = np.asarray(fits["lf"].inputs["P"], float)
    assert box.get_x() == pytest.approx(P.min()) and box.get_width() == pytest.approx(P.max() - P.min())
    assert "base model $L_f$ = 0.35" in ax.get_title()
    plt.close("all")


def test_residuals_are_coloured_by_rank(fits):
    from conftest import make_synthetic_runs

    from forgetting_laws.analyse.standard import _fitted_ranks

    six_runs = make_synthetic_runs(ranks=(4, 8, 16, 64, 128, 256))
    ranks = _fitted_ranks(six_runs, fits["lf"], 1)
    assert ranks is not None and sorted(set(ranks)) == [4, 8, 16, 64, 128, 256]
    ax = plots.residuals(fits["lf"], ranks=ranks)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 6 and "$L_f$" in ax.get_xlabel()
    assert sum(len(c.get_offsets()) for c in scatters) == fits["lf"].metrics["n"]
    plt.close("all")
