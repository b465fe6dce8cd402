"""Tests of the law registry and the built-in laws."""

from __future__ import annotations

import numpy as np
import pytest

from forgetting_laws.analyse import laws
from forgetting_laws.analyse.laws import Law, LawError

# Kalajdzievski 2024, Table 1 (OpenOrca column), see shared/reference/kalajdzievski_constants.md
OPENORCA = dict(a_f=0.0388e7, a_ft=0.0007e7, b_f=23.6418, b_ft=72.9186, c_ft=0.0020, s_ft=0.6126,
                alpha_f=0.0351, alpha_ft=0.0424, beta_f=0.1468, beta_ft=0.1219, rho=7.6885,
                c_fft=1.7334, s_fft=2.0481)

REQUIRED = ["inverse_linear", "power_law", "kalajdzievski_ft", "kalajdzievski_forget",
            "kalajdzievski_joint", "chinchilla"]

SIGNATURES = {
    "inverse_linear": (("L_ft",), ("c", "s")),
    "power_law": (("x",), ("s", "c", "alpha")),
    "kalajdzievski_ft": (("P", "N"), ("c", "s", "a", "alpha", "b", "beta", "rho")),
    "kalajdzievski_forget": (("P", "N"), ("c_f", "s_f", "a_f", "alpha_f", "b_f", "beta_f", "rho")),
    "chinchilla": (("N", "D"), ("E", "A", "B", "alpha", "beta")),
}

POINTS = {  # a parameter point for each law, used by the gradient and broadcasting checks
    "power_law": ({"x": np.logspace(0, 3, 7)}, dict(s=1.0, c=2.0, alpha=0.4)),
    "chinchilla": ({"N": np.logspace(7, 10, 7), "D": np.logspace(9, 12, 7)},
                   dict(E=1.8, A=480.0, B=2000.0, alpha=0.35, beta=0.37)),
    "kalajdzievski_ft": ({"P": np.logspace(7, 9, 7), "N": np.linspace(50, 260, 7)},
                         dict(c=0.002, s=0.61, a=7e3, alpha=0.0424, b=72.9, beta=0.12, rho=7.69)),
    "kalajdzievski_forget": ({"P": np.logspace(7, 9, 7), "N": np.linspace(50, 260, 7)},
                             dict(c_f=0.0035, s_f=0.99, a_f=3.9e5, alpha_f=0.035, b_f=23.6,
                                  beta_f=0.147, rho=7.69)),
    "kalajdzievski_joint": ({"P": np.logspace(7, 9, 7), "N": np.linspace(50, 260, 7)},
                            dict(c=0.002, s=0.61, a=7e3, alpha=0.0424, b=72.9, beta=0.12,
                                 c_f=0.0035, s_f=0.99, a_f=3.9e5, alpha_f=0.035, b_f=23.6,
                                 beta_f=0.147, rho=7.69)),
}


def test_builtin_laws_registered():
    assert set(REQUIRED) <= set(laws.names())
    assert laws.names() == sorted(laws.names())


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_names_of_inputs_and_params(name):
    law = laws.get(name)
    assert (law.inputs, law.params) == SIGNATURES[name]
    assert law.formula and law.latex


def test_get_unknown_law_names_known_ones():
    with pytest.raises(LawError, match=r"law 'foo' is not registered; known laws: .*chinchilla"):
        laws.get("foo")


def test_registering_a_different_law_under_a_taken_name_is_an_error():
    other = laws.from_function(lambda N, D, E: E + 0 * N * D, "chinchilla", inputs=["N", "D"])
    with pytest.raises(LawError, match=r"law 'chinchilla' is already registered with a different definition "
                                       r"\(differs in function, params"):
        laws.register(other)


def test_registering_the_same_law_again_works():
    """A re-run notebook cell builds a new function object from the same source."""
    def cell():
        def saturating(t, top, k):
            return top * (1 - np.exp(-k * t))
        return laws.from_function(saturating, "saturating_rerun", inputs=["t"], register_law=True)

    first, second = cell(), cell()
    assert first.func is not second.func
    assert laws.get("saturating_rerun") is second
    laws.register(laws.get("chinchilla"))  # a built-in law, registered again as it is


def test_get_returns_law_objects_unchanged():
    law = laws.get("power_law")
    assert laws.get(law) is law


def test_malformed_law_is_refused():
    with pytest.raises(LawError, match=r"linear names \['z'\] that are not parameters"):
        Law("bad", laws.power_law, ("x",), ("s", "c", "alpha"), linear=("z",))
    with pytest.raises(LawError, match=r"\['x'\] are both inputs and parameters"):
        Law("bad", laws.power_law, ("x",), ("x", "c"))


def test_kalajdzievski_constants_reproduce_paper_values():
    k = OPENORCA
    P, N = 2e7, 260.0
    l_ft = laws.kalajdzievski_ft(P, N, k["c_ft"], k["s_ft"], k["a_ft"], k["alpha_ft"], k["b_ft"],
                                 k["beta_ft"], k["rho"])
    l_f = laws.kalajdzievski_forget(P, N, k["c_fft"] * k["c_ft"], k["s_fft"] - k["c_fft"] * k["s_ft"],
                                    k["a_f"], k["alpha_f"], k["b_f"], k["beta_f"], k["rho"])
    assert l_ft == pytest.approx(0.68, abs=0.01)
    assert l_f == pytest.approx(0.87, abs=0.01)
    # the pair lies close to the paper's inverse-linear line
    assert laws.inverse_linear(l_ft, k["c_fft"], k["s_fft"]) == pytest.approx(l_f, abs=0.03)


def test_chinchilla_at_epoch_optimum():
    value = laws.chinchilla(N=70e9, D=1.4e12, E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366)
    assert value == pytest.approx(1.817 + 482.0 / 70e9**0.348 + 2085.4 / 1.4e12**0.366)


def test_joint_law_stacks_both_outputs():
    X, p = POINTS["kalajdzievski_joint"]
    out = laws.kalajdzievski_joint(**X, **p)
    assert out.shape == (2, 7)
    ft = laws.kalajdzievski_ft(**X, **{k: p[k] for k in SIGNATURES["kalajdzievski_ft"][1]})
    np.testing.assert_allclose(out[0], ft)


@pytest.mark.parametrize("name", list(POINTS))
def test_analytic_gradient_matches_finite_differences(name):
    law = laws.get(name)
    X, p = POINTS[name]
    g = np.asarray(law.grad(**X, **p)).reshape(len(law.params), -1)
    for j, q in enumerate(law.params):
        h = 1e-6 * max(abs(p[q]), 1e-3)
        up = np.ravel(law(**X, **{**p, q: p[q] + h}))
        dn = np.ravel(law(**X, **{**p, q: p[q] - h}))
        np.testing.assert_allclose(g[j], (up - dn) / (2 * h), rtol=1e-4, atol=1e-9, err_msg=q)


@pytest.mark.parametrize("name", list(POINTS))
def test_laws_broadcast_over_parameter_sets(name):
    law = laws.get(name)
    X, p = POINTS[name]
    batch = {q: np.array([[v], [1.01 * v]]) for q, v in p.items()}
    out = np.asarray(law(**X, **batch)).reshape(2, -1)
    np.testing.assert_allclose(out[0], np.ravel(law(**X, **p)))


def test_from_function_reads_params_from_signature():
    def expo(t, A, tau):
        return A * np.exp(-t / tau)

    law = laws.from_function(expo, "expo_test", inputs=["t"], bounds={"tau": (0, None)})
    assert law.params == ("A", "tau")
    assert law.bound("tau") == (0.0, float("inf"))
    assert float(law(t=1.0, A=2.0, tau=1.0)) == pytest.approx(2 * np.exp(-1))
    assert "expo_test" not in laws.names()


def test_from_lmfit_model_takes_hints():
    import lmfit  # a hard dependency: never skipped

    def decay(t, amp, tau):
        return amp * np.exp(-t / tau)

    model = lmfit.Model(decay)
    model.set_param_hint("tau", value=3.0, min=0.0)
    law = laws.from_lmfit_model(model, name="decay_test")
    assert law.inputs == ("t",) and law.params == ("amp", "tau")
    assert law.bound("tau")[0] == 0.0
    assert law.start_grid()[1][0, 1] == 3.0


def test_start_grid_is_cartesian_product():
    names, grid = laws.get("chinchilla").start_grid()
    assert names == ("E", "A", "B", "alpha", "beta")
    assert grid.shape == (4500, 5)


# ---------------------------------------------------------------- user laws


def test_from_function_builds_a_log_spaced_start_grid():
    def decay(t, A, tau, k):
        return A * np.exp(-((t / tau) ** k))

    law = laws.from_function(decay, "decay_grid", inputs=["t"], bounds={"tau": (0, None), "k": (0.1, 3)},
                             linear=["A"])
    names, grid = law.start_grid()
    assert names == ("tau", "k") and "A" not in law.grid  # linear parameters are solved, not gridded
    tau = np.array(law.grid["tau"])
    assert tau[0] == pytest.approx(1e-3) and tau[-1] == pytest.approx(1e3)
    np.testing.assert_allclose(np.diff(np.log(tau)), np.log(tau[1] / tau[0]))  # log-spaced
    assert min(law.grid["k"]) >= 0.1 and max(law.grid["k"]) < 3  # inside the bounds, the top one excluded
    assert grid.shape[0] <= laws.DEFAULT_GRID_BUDGET


def test_default_grid_finds_what_a_single_start_misses():
    """Before: every parameter started at 1.0, once: an 8x worse objective, reported as converged."""
    from forgetting_laws.analyse.fit import fit_arrays

    def decay(t, A, tau):
        return A * np.exp(-t / tau)

    t = np.linspace(0, 2000, 40)
    law = laws.from_function(decay, "decay_default", inputs=["t"], bounds={"tau": (0, None)}, linear=["A"])
    res = fit_arrays(law, {"t": t}, 3.0 * np.exp(-t / 300.0), loss="mse", bootstrap=0)
    assert res.params["tau"] == pytest.approx(300.0, rel=1e-4)


def test_a_fit_no_better_than_a_constant_is_flagged():
    from forgetting_laws.analyse.fit import fit_arrays

    def bump(x, A, mu):
        return A * np.exp(-((x - mu) ** 2))

    law = laws.from_function(bump, "bump_flat", inputs=["x"], grid={"A": [1.0], "mu": [100.0]})
    x = np.linspace(0, 10, 30)
    res = fit_arrays(law, {"x": x}, 2.0 + 0.1 * np.sin(x), loss="mse", bootstrap=0)
    assert any("the fit is no better than a constant" in w for w in res.warnings)


def test_a_scalar_only_function_is_vectorised_with_a_warning():
    import math

    from forgetting_laws.analyse.fit import fit_arrays

    def scalar_law(x, s, c, alpha):
        return s + c * x ** (-float(alpha))  # float(): scalars only

    with pytest.warns(UserWarning, match=r"law 'scalar_law' does not take numpy arrays .* evaluated one parameter "
                                         r"set at a time, which is slow. Write it with numpy operations"):
        law = laws.from_function(scalar_law, "scalar_law", inputs=["x"], linear=["s", "c"], bounds={"alpha": (0, 3)})
    x = np.logspace(0, 2, 20)
    res = fit_arrays(law, {"x": x}, 1 + 2 * x**-0.5, loss="mse", bootstrap=0)
    assert res.params["alpha"] == pytest.approx(0.5, rel=1e-6)

    def elementwise(x, a):
        return math.exp(-a * x)  # math.exp: one element at a time

    with pytest.warns(UserWarning, match=r"evaluated one element at a time"):
        law = laws.from_function(elementwise, "elementwise_law", inputs=["x"], bounds={"a": (0, None)})
    assert law(x=np.array([0.0, 1.0]), a=1.0) == pytest.approx([1.0, np.exp(-1)])


def test_a_function_that_cannot_be_evaluated_is_refused():
    def needs_strings(x, a):
        return np.asarray(x, dtype=float) + int("a")  # ValueError whatever the shape

    with pytest.raises(LawError, match=r"law 'needs_strings' cannot be evaluated at its start values .* use np.exp"):
        laws.from_function(needs_strings, "needs_strings", inputs=["x"])
