"""The shape of the code, checked as code: the layering of the stage packages, no import cycle, short
functions, no capability probing (docs/architecture.md)."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
#: a longer function says why on a docstring line starting with this
LONG_REASON = "Long:"
#: optional dependencies that may be guarded by an import probe
OPTIONAL = ("ray", "flwr", "segment_anything")


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_lower_stage_imports_a_higher_one():
    ig = _graph_module()
    assert ig.violations(ig.graph()) == []


def test_the_import_graph_has_no_cycle():
    ig = _graph_module()
    assert ig.cycles(ig.graph()) == []


def test_the_checker_sees_a_violation_and_a_cycle():
    ig = _graph_module()
    g = {"fedleak.client.data": {"fedleak.attacks.engine"}, "fedleak.attacks.engine": {"fedleak.client.data"}}
    assert ig.violations(g) == ["fedleak.client.data (layer 1) imports fedleak.attacks.engine (layer 3)"]
    assert ig.cycles(g) == [["fedleak.attacks.engine", "fedleak.client.data"]]


def _long_functions() -> list[str]:
    out = []
    for path in sorted((ROOT / "fedleak").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1
                if isinstance(node, ast.ClassDef):
                    if n > 4 * MAX_LINES:  # a class is a group of short functions; very long ones are split
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name} ({n} lines)")
                    continue
                doc = ast.get_docstring(node) or ""
                if n > MAX_LINES and not any(line.strip().startswith(LONG_REASON) for line in doc.splitlines()):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_functions_are_short_or_say_why():
    assert _long_functions() == []


def test_no_capability_probing():
    """``find_spec``/``except AttributeError``/``except TypeError`` only guard real optional dependencies."""
    pat = re.compile(r"find_spec|except AttributeError|except TypeError")
    hits = []
    for path in sorted((ROOT / "fedleak").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if pat.search(line):
                near = "\n".join(lines[max(0, i - 4): i + 3])
                if not any(dep in near for dep in OPTIONAL):
                    hits.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert hits == []
