"""The analysing half stands alone: it imports without torch and its modules import no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

from conftest import REPO

ANALYSE = REPO / "forgetting_laws" / "analyse"


def test_analysing_half_fits_with_torch_blocked():
    script = textwrap.dedent("""
        import importlib, importlib.abc, pkgutil, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, BlockTorch())  # `import torch` now raises ImportError
        import numpy as np
        import forgetting_laws.analyse as analyse
        for m in pkgutil.iter_modules(analyse.__path__):
            importlib.import_module(f"forgetting_laws.analyse.{m.name}")
        from forgetting_laws import load_runs
        from forgetting_laws.analyse.fit import fit, fit_arrays
        x = np.logspace(0, 3, 30)
        res = fit_arrays("power_law", {"x": x}, 1 + 2 * x**-0.5, loss="mse", bootstrap=0)
        assert abs(res.params["alpha"] - 0.5) < 1e-6
        df = load_runs("examples/demo-runs")
        fit(df, "inverse_linear", x={"L_ft": "ft_loss"}, y="forget_loss", bootstrap=0)
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def _imports(path) -> set[str]:
    """Sibling modules of forgetting_laws.analyse that ``path`` imports anywhere (TYPE_CHECKING and
    function-level imports included: each is an arrow of the import graph)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            out |= {n.split(".")[0] for n in names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("forgetting_laws.analyse."):
            out.add(node.module.split(".")[2])
    return out


def test_analysing_modules_import_no_cycle():
    modules = {p.stem: p for p in ANALYSE.glob("*.py") if p.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    seen, done = [], set()

    def visit(name):
        assert name not in seen, f"import cycle: {' -> '.join(seen[seen.index(name):] + [name])}"
        if name in done:
            return
        seen.append(name)
        for dep in graph[name]:
            visit(dep)
        seen.pop()
        done.add(name)

    for name in graph:
        visit(name)
