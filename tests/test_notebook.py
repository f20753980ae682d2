"""notebooks/explore_catalog.ipynb: stored clean, finds the newest run with catalogs, and runs top to
bottom in a real Jupyter kernel (this venv's interpreter) on the tiny run's catalogs."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from ctl_lightning.retrieval.catalog import Catalog

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_catalog.ipynb"
PROBE = "ctl-test-probe"


def read_notebook() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def stream_text(cell: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == name)


def images(cell: nbformat.NotebookNode) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(out.data["image/png"]))).convert("RGB")
        for out in cell.outputs
        if out.output_type in ("display_data", "execute_result") and "image/png" in out.get("data", {})
    ]


def one_figure(cell: nbformat.NotebookNode, min_width: int) -> Image.Image:
    """The cell's only picture, checked to be a real figure (not an empty canvas)."""
    pictures = images(cell)
    assert len(pictures) == 1, f"cell {cell.metadata['tags']} shows {len(pictures)} images, expected 1"
    image = pictures[0]
    assert image.width >= min_width and image.height >= 200, image.size
    colours = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"figure looks blank: {len(colours)} distinct colours"
    return image


def venv_kernel(tmp_path: Path):
    """A kernel manager that starts ipykernel with this interpreter, whatever kernelspecs the user has."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = tmp_path / "kernels" / "ctl-test-venv"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "ctl test venv", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return AsyncKernelManager(kernel_name="ctl-test-venv", kernel_spec_manager=specs)


def run_cells(nb: nbformat.NotebookNode, tags: list[str]) -> dict:
    """Runs the tagged cells' source in-process, in order, sharing one namespace (no kernel needed)."""
    namespace: dict = {}
    for tag in tags:
        exec(compile(tagged(nb, tag).source, f"<{NOTEBOOK.name}:{tag}>", "exec"), namespace)
    return namespace


def test_notebook_is_stored_clean_with_a_parameter_cell_first():
    nb = read_notebook()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), "notebook is stored with outputs"
    assert nb.metadata.kernelspec.name == "python3"
    assert "parameters" in code[0].metadata.get("tags", []) and "RUN_DIR" in code[0].source
    for tag in ("resolve-run", "summary", "recommendations", "projection-category", "projection-style"):
        tagged(nb, tag)


def make_run(runs: Path, name: str, catalogs: bool) -> Path:
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    if catalogs:
        for kind in ("similar", "compatible"):
            (run / "catalogs" / kind).mkdir(parents=True)
            (run / "catalogs" / kind / "manifest.json").write_text("{}")
    return run


def test_default_run_is_the_newest_with_catalogs(tmp_path, monkeypatch):
    runs = tmp_path / "outputs" / "train" / "runs"
    make_run(runs, "2030-01-01_09-00-00-000000", catalogs=True)
    expected = make_run(runs, "2030-01-02_09-00-00-000000", catalogs=True)
    make_run(runs, "2030-01-03_09-00-00-000000", catalogs=False)  # still training, or crashed
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("CTL_RUN_DIR", raising=False)
    nb = read_notebook()

    for cwd in (tmp_path / "notebooks", tmp_path):  # Jupyter's cwd is notebooks/; also from the repo root
        monkeypatch.chdir(cwd)
        assert run_cells(nb, ["parameters", "resolve-run"])["RUN_DIR"] == expected.resolve()

    monkeypatch.setenv("CTL_RUN_DIR", str(tmp_path / "elsewhere"))
    assert run_cells(nb, ["parameters", "resolve-run"])["RUN_DIR"] == (tmp_path / "elsewhere").resolve()


def test_no_run_with_catalogs_says_what_to_do(tmp_path, monkeypatch):
    make_run(tmp_path / "outputs" / "train" / "runs", "2030-01-03_09-00-00-000000", catalogs=False)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("CTL_RUN_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="make train"):
        run_cells(read_notebook(), ["parameters", "resolve-run"])


@pytest.mark.slow
def test_notebook_runs_on_the_tiny_catalog(tiny_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = read_notebook()
    probe = nbformat.v4.new_code_cell(
        "import json, sys\n"
        "print(json.dumps({'executable': sys.executable, 'run_dir': str(RUN_DIR), 'projection': list(projection.shape),\n"
        "                  'has_styles': HAS_STYLES, 'results': [r.to_json() for r in results]}))"
    )
    probe.metadata["tags"] = [PROBE]
    nb.cells.append(probe)
    monkeypatch.setenv("CTL_RUN_DIR", str(tiny_run))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as on a headless CI runner: the notebook must still show its figures
    client = NotebookClient(
        nb, km=venv_kernel(tmp_path), timeout=300, allow_errors=False, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    assert not [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    state = json.loads(stream_text(tagged(nb, PROBE)))
    assert Path(state["executable"]).resolve() == Path(sys.executable).resolve()
    assert Path(state["run_dir"]) == tiny_run.resolve()
    assert str(tiny_run.resolve()) in stream_text(tagged(nb, "resolve-run"))

    similar, compatible = Catalog.load(tiny_run / "catalogs" / "similar"), Catalog.load(tiny_run / "catalogs" / "compatible")
    summary = stream_text(tagged(nb, "summary"))
    assert f"similar catalog: {len(similar)} products x {similar.embeddings.shape[1]} dims" in summary
    assert f"compatible catalog: {len(compatible)} products x {compatible.embeddings.shape[1]} dims" in summary
    categories = sorted(set(compatible.table.categories))
    assert f"{len(categories)} categories:" in summary
    assert all(category in summary for category in categories)
    assert stream_text(tagged(nb, "summary"), "stderr") == ""

    # Two example queries, each with a similar and a complementary row, printed and drawn.
    cell = tagged(nb, "recommendations")
    text = stream_text(cell)
    assert [r["mode"] for r in state["results"]] == ["similar", "complementary"] * 2
    for rec in state["results"]:
        query = rec["query"]
        assert len(rec["items"]) == 5, rec
        assert f"{rec['mode']} for product {query['row_id']} ({query['category']}" in text
        item_categories = {item["category"] for item in rec["items"]}
        if rec["mode"] == "similar":
            assert item_categories == {query["category"]}
        else:
            assert query["category"] not in item_categories and len(item_categories) == 5  # one per other category
        for item in rec["items"]:
            assert f"product {item['row_id']:>6}  {item['category']:<22} score {item['score']:.3f}" in text
    one_figure(cell, min_width=600)

    # The projection covers the whole tiny catalog; the synthetic data has planted styles, so both maps are drawn.
    assert state["projection"] == [min(len(compatible), 5000), 2]
    one_figure(tagged(nb, "projection-category"), min_width=500)
    assert state["has_styles"] is True
    style_cell = tagged(nb, "projection-style")
    assert "nearest compatible neighbours sharing the product's style" in stream_text(style_cell)
    one_figure(style_cell, min_width=500)
