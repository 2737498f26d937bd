"""notebooks/colab_tpu.ipynb, executed cell by cell on CPU with the smoke config."""
import json
import os
import signal

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "colab_tpu.ipynb"


def _ci_parameters(workdir):
  return "\n".join([
      f"PROJECT_DIR = {str(REPO)!r}",
      'CONFIG = "configs/smoke.py"',
      'OVERRIDES = {"train.steps": 6, "train.eval_every": 3}',
      f"WORKDIR = {str(workdir)!r}",
      "INSTALL = False  # CI installed the package already",
      "TENSORBOARD = True",
      'EXAMPLES = ["a wonderful, moving film", "a dull, tedious mess"]',
  ])


def _stop_tensorboards(logdir):
  from tensorboard import manager
  for info in manager.get_all():
    if str(logdir) in info.logdir:
      try:
        os.kill(info.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass


@pytest.mark.slow
def test_colab_notebook_runs_every_cell_on_cpu(tmp_path):
  import nbclient
  import nbformat
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(parameters) == 1
  workdir = tmp_path / "run"
  parameters[0].source = _ci_parameters(workdir)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
  finally:
    _stop_tensorboards(workdir / "tensorboard")

  outputs = "\n".join(o.get("text", "") + json.dumps(o.get("data", {}))
                      for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
  assert "Device settings: {'distribution.strategy': 'default'}" in outputs
  from tf_finetune import distribute
  precision = "mixed_bfloat16" if distribute.native_bfloat16("default")[0] else "float32"
  assert f"precision {precision}" in outputs  # configs/smoke.py: train.precision=auto
  assert "step 6/6 | loss" in outputs and "examples/s | ETA" in outputs  # progress lines
  assert "dev accuracy:" in outputs  # train_and_evaluate's summary
  assert "image/png" in outputs  # the confusion matrix
  assert "tensorboard" in outputs.lower() and "iframe" in outputs.lower()
  assert (workdir / "eval" / "report.json").is_file()
  exported = sorted((workdir / "export").glob("*/1/saved_model.pb"))
  assert len(exported) == 1
  labels = json.loads((workdir / "labels.json").read_text())
  prediction_lines = [line for line in outputs.splitlines()
                      if line.strip().endswith(("a wonderful, moving film", "a dull, tedious mess"))]
  assert len(prediction_lines) == 2
  assert all(line.split()[0] in labels for line in prediction_lines)
