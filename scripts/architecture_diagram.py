"""Draw docs/architecture.png: the stage packages of fedleak, bottom-up by layer, with an arrow for each
package-level import found in the source (scripts/import_graph.py). Re-run after moving code:

    scripts/venv-run python scripts/architecture_diagram.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import import_graph as ig  # noqa: E402

#: one line under each box: what the stage owns
ROLES = {
    "fedleak.errors": "one-line errors", "fedleak.options": "typed options", "fedleak.registry": "names",
    "fedleak.io": "atomic files", "fedleak.client": "case: data, model, protocol, obfuscation",
    "fedleak.server": "view, scenarios (honest, imprint)", "fedleak.attacks": "engine, presets, readout",
    "fedleak.enhance": "post-processing", "fedleak.metrics": "scores, plots", "fedleak.config": "the edge",
    "fedleak.experiment": "case, run, sweep", "fedleak.report": "HTML", "fedleak.integrations": "Flower",
    "fedleak.commands": "CLI", "fedleak.cli": "entry point", "fedleak.__main__": "python -m",
    "fedleak": "public API",
}


def positions(packages: list[str]) -> dict[str, tuple[float, float]]:
    by_layer: dict[int, list[str]] = {}
    for p in packages:
        by_layer.setdefault(ig.layer(p), []).append(p)
    pos = {}
    for lay, names in by_layer.items():
        names.sort()
        for i, n in enumerate(names):
            pos[n] = ((i - (len(names) - 1) / 2) * 2.6, lay * 1.25)
    return pos


def stage_edges(pg: dict[str, set[str]]) -> dict[str, set[str]]:
    """The package graph without the edges into the core layer 0 (every layer may use it)."""
    return {a: {b for b in bs if ig.layer(b) > 0 or ig.layer(a) == 0} for a, bs in pg.items()}


def draw(out: Path) -> Path:
    pg = stage_edges(ig.package_graph(ig.graph()))
    pkgs = sorted(set(pg) | {b for bs in pg.values() for b in bs})
    pos = positions(pkgs)
    fig, ax = plt.subplots(figsize=(11, 11))
    for a in pkgs:
        for b in sorted(pg.get(a, ())):
            (x0, y0), (x1, y1) = pos[a], pos[b]
            ax.annotate("", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22),
                        arrowprops=dict(arrowstyle="->", color="#8899aa", lw=0.8, shrinkA=4, shrinkB=4))
    for p, (x, y) in pos.items():
        ax.text(x, y, f"{p}\n{ROLES.get(p, '')}", ha="center", va="center", fontsize=8.5,
                bbox=dict(boxstyle="round,pad=0.4", fc="#eef4fb", ec="#35608f"))
    ax.set_title("fedleak stage packages, lowest layer at the bottom. Arrow: 'imports'. Every layer\n"
                 "may use the core row at the bottom (errors, options, registry, io); those arrows are left out",
                 fontsize=11)
    ax.axis("off")
    xs = [x for x, _ in pos.values()]
    ax.set_xlim(min(xs) - 1.6, max(xs) + 1.6)
    ax.set_ylim(-0.7, max(y for _, y in pos.values()) + 0.7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(ig.ROOT / "docs" / "architecture.png"))
