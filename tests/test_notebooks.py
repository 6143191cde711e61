"""The Colab notebooks run headless from the checkout (tiny settings), and git holds them
without outputs."""

import os

import nbformat
import pytest

from cgan_jax.quality import weights as weights_lib

from .conftest import ROOT

NOTEBOOKS = ("quickstart", "knowledge_transfer_graph")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
  nb = nbformat.read(ROOT / "colab" / f"{name}.ipynb", as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  source = "\n".join(c.source for c in code)
  assert "import cgan_jax" in source or "from cgan_jax" in source
  assert "def " not in source  # it calls the package; it does not copy its code


@pytest.mark.skipif(weights_lib.fid_helper_file() is None, reason="needs the offline FID weights")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, tmp_path, monkeypatch):
  from nbclient import NotebookClient

  monkeypatch.setenv("CGAN_JAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("CGAN_JAX_NOTEBOOK_OUT", str(tmp_path))
  monkeypatch.setenv("PYTHONPATH", str(ROOT))
  nb = nbformat.read(ROOT / "colab" / f"{name}.ipynb", as_version=4)
  # Started inside colab/, as Colab or Jupyter would: the setup cell finds the checkout above.
  client = NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "colab")}}
  )
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  expected = {"quickstart": 3, "knowledge_transfer_graph": 4}[name]  # grids + curves / plots
  assert len(images) >= expected, len(images)
  if name == "knowledge_transfer_graph":
    assert (tmp_path / "kt_search" / "best.md").is_file()
    assert os.path.isfile(tmp_path / "kt_graph.png")
