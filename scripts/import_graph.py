"""The import graph of the fedleak package, read from its source (every ``import``, also inside functions).

    python scripts/import_graph.py            # print layer violations and cycles (exit 1 if any)
    python scripts/import_graph.py --dot      # the package-level graph in Graphviz dot syntax

Used by tests/test_architecture.py and by scripts/architecture_diagram.py (docs/architecture.png).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fedleak"

#: stages from the bottom up; a module may import only its own layer or lower ones
LAYERS: list[tuple[str, ...]] = [
    ("fedleak.errors", "fedleak.options", "fedleak.registry", "fedleak.io", "fedleak.version", "fedleak.progress",
     "fedleak.device"),
    ("fedleak.client",),
    ("fedleak.server",),
    ("fedleak.attacks",),
    ("fedleak.enhance",),
    ("fedleak.metrics",),
    ("fedleak.config",),
    ("fedleak.experiment",),
    ("fedleak.report",),
    ("fedleak.integrations", "fedleak.commands", "fedleak.cli", "fedleak.__main__", "fedleak"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, current: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The fedleak modules that ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fedleak"))
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, name, path.name == "__init__.py")
            if not mod.startswith("fedleak"):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            out.update(subs or [mod])
    return {m for m in out if m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: {m for m in imports_of(n, p, known) if m in known} for n, p in mods.items()}


def layer(name: str) -> int:
    best, depth = len(LAYERS) - 1, -1
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (name == pre or name.startswith(pre + ".")) and pre.count(".") > depth:
                best, depth = i, pre.count(".")
    return best


def violations(g: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer by a lower one."""
    return [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
            for a in sorted(g) for b in sorted(g[a]) if layer(b) > layer(a)]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, bs in g.items():
        pa = package_of(a)
        out.setdefault(pa, set()).update(package_of(b) for b in bs if package_of(b) != pa)
    return out


def main(argv: list[str]) -> int:
    g = graph()
    if "--dot" in argv:
        pg = package_graph(g)
        print("digraph fedleak {")
        for a in sorted(pg):
            for b in sorted(pg[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    bad = violations(g)
    cyc = cycles(g)
    for line in bad:
        print("layer:", line)
    for c in cyc:
        print("cycle:", " <-> ".join(c))
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(bad)} layer violations, {len(cyc)} cycles")
    return 1 if bad or cyc else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
