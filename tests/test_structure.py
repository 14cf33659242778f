"""The package's shape (issue 21): no import cycle between its modules, at module level or
inside functions, and no `_private` name imported from another module."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gcpo_cli"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """(module -> the package modules it imports anywhere in it, [(module, private name)])."""
    edges, private = {m: set() for m in mods}, []
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                if not target.startswith("gcpo_cli"):
                    continue
                for alias in node.names:
                    name = f"{target}.{alias.name}"
                    hit = name if name in mods else target
                    if hit in mods and hit != m:
                        edges[m].add(hit)
                    if hit == target and alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((m, f"{target}.{alias.name}"))
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return edges, private


def test_no_import_cycle_and_no_private_import_across_modules():
    mods = _modules()
    edges, private = _imports(mods)
    assert private == []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(edges[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_cycle_inside_a_function(tmp_path, monkeypatch):
    """The test above cannot pass by not looking: a function-local import that closes a cycle
    is found."""
    pkg = tmp_path / "gcpo_cli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n    from ._c import _y\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    edges, private = _imports(_modules())
    assert "gcpo_cli.a" in edges["gcpo_cli.b"] and "gcpo_cli.b" in edges["gcpo_cli.a"]
    assert private == [("gcpo_cli.b", "gcpo_cli._c._y")]


def test_greedy_is_decided_by_the_sampling_record_alone():
    """Whether a temperature means greedy decoding is one property, records.Sampling.greedy:
    no sampling path compares a temperature with 0 itself (issue 21: it was decided in 8 places)."""
    from gcpo_cli.records import Sampling

    assert Sampling(n=4, temperature=0.0).greedy and Sampling(n=4, temperature=0.0).draws == 1
    assert Sampling(n=4, temperature=0.0, top_p=0.9).nucleus == 1.0  # greedy ignores top-p
    assert not Sampling(n=4, temperature=0.7).greedy and Sampling(n=4, temperature=0.7, top_p=0.9).draws == 4
    deciders = []
    for name in ("rollout", "engines", "evaluation", "golden", "train", "learner"):
        for node in ast.walk(ast.parse((PKG / f"{name}.py").read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(side, (ast.Name, ast.Attribute)) and "temperature" in ast.unparse(side)
                    for side in (node.left, *node.comparators)):
                deciders.append(f"{name}.py:{node.lineno}: {ast.unparse(node)}")
    assert deciders == []
