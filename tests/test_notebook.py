"""examples/quickstart.ipynb executes top to bottom (nbclient, a real kernel) and shows what it promises."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes_and_shows_results(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "bits per parameter" in text and "'psnr'" in text and "| cell |" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2  # the inline grid and the sweep's frontier plot
    # the API shows progress in a notebook: the attack's bar (tqdm's widget, or its text bar without
    # ipywidgets) and the sweep's per-cell lines with the ETA
    attack_cell = next(c for c in nb.cells if c.cell_type == "code" and "fedleak.attack(" in c.source)
    widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in attack_cell.outputs)
    text_bar = any(o.output_type == "stream" and o.name == "stderr" and "60/60" in o.text for o in attack_cell.outputs)
    assert widget or text_bar, attack_cell.outputs
    sweep_cell = next(c for c in nb.cells if c.cell_type == "code" and "run_sweep(" in c.source)
    err = "".join(o.text for o in sweep_cell.outputs if o.output_type == "stream" and o.name == "stderr")
    assert "[1/3]" in err and "ETA" in err and "[3/3]" in err


def test_notebook_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("make_quickstart", ROOT / "scripts" / "make_quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert [c.source for c in mod.build().cells] == [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells]
