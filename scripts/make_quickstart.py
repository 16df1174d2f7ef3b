"""Write examples/quickstart.ipynb (the notebook is generated from this script; edit here, then re-run):

    scripts/venv-run python scripts/make_quickstart.py

tests/test_notebook.py executes the notebook with nbclient on every test run.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", "# fedleak quickstart\n\nSimulate one federated-learning client, attack what the server receives, "
           "score the reconstruction, then sweep a defence. Everything runs on a laptop CPU in about a minute "
           "(tiny settings: 32x32 photos that ship inside scikit-image, ROG's LeNet)."),
    ("code", "import fedleak\n\n"
             "config = {\"seed\": 0, \"threads\": 2, \"data\": {\"source\": \"builtin\", \"size\": 32, \"batch_size\": 2},\n"
             "          \"model\": {\"name\": \"lenet\"}, \"obfuscation\": \"qsgd(16)\"}\n"
             "case = fedleak.Case(config)              # the client: images, labels, model, protocol, obfuscation\n"
             "update = case.client_update()            # what the server receives\n"
             "print(f\"{update.stats['bits_per_parameter']:.2f} bits per parameter on the wire\")"),
    ("md", "## Attack\n\nThe attacker gets the server's view (the model it sent, the data shape) and the update, "
           "never `case.images`. In a notebook the attack shows a progress bar (a widget with `ipywidgets` "
           "installed, text otherwise); `progress=False` turns it off, `progress=True` shows it in scripts too."),
    ("code", "rec = fedleak.attack(\"rog\", case.server_view(), update, iterations=60)\n"
             "scores = fedleak.evaluate(case.images, rec, case.labels)\n"
             "{k: round(v, 3) for k, v in scores[\"mean\"].items()}"),
    ("md", "## Show it\n\nOriginals on top, reconstructions below (paired with the originals by the evaluation)."),
    ("code", "import matplotlib.pyplot as plt\n\n"
             "perm = scores[\"permutation\"]\n"
             "fig, axes = plt.subplots(2, len(perm), figsize=(2.2 * len(perm), 4.4), squeeze=False)\n"
             "for i, j in enumerate(perm):\n"
             "    axes[0][i].imshow(case.images[i].permute(1, 2, 0))\n"
             "    axes[1][i].imshow(rec.images[j].detach().clamp(0, 1).permute(1, 2, 0))\n"
             "    axes[1][i].set_title(f\"{scores['per_image']['psnr'][i]:.1f} dB\")\n"
             "for ax in axes.flat:\n"
             "    ax.axis(\"off\")\n"
             "plt.show()"),
    ("md", "## Sweep a defence\n\nThree QSGD levels, one attack: a table and the PSNR-against-bits frontier. "
           "Each finished cell prints a line with cells done, elapsed time and the ETA."),
    ("code", "import tempfile\n"
             "from IPython.display import Image, display\n"
             "from fedleak.experiment.sweep import run_sweep, table_markdown\n\n"
             "spec = {\"base\": {**config, \"data\": {\"source\": \"builtin\", \"size\": 32, \"batch_size\": 1}},\n"
             "        \"grid\": {\"obfuscation\": [\"qsgd(2)\", \"qsgd(16)\", \"qsgd(256)\"],\n"
             "                 \"attack\": [{\"name\": \"rog\", \"iterations\": 40}]},\n"
             "        \"seeds\": [0]}\n"
             "folder, rows = run_sweep(spec, out=tempfile.mkdtemp(prefix=\"fedleak-sweep-\"), workers=1, threads=2)\n"
             "print(table_markdown(rows))\n"
             "display(Image(filename=str(folder / \"psnr_vs_bits.png\")))"),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating the notebook changes only what was edited
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
    nbformat.write(build(), out)
    print(out)
