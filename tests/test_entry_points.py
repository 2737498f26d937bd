"""The absl entry points as a user runs them, in subprocesses."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        cwd=cwd or REPO, timeout=600)


@pytest.mark.slow
def test_smoke_train_then_resume_then_evaluate(tmp_path):
  workdir = tmp_path / "smoke"
  first = _run("tf_finetune.train", "--config=configs/smoke.py", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "dev accuracy:" in first.stdout
  for name in ("config.json", "labels.json", "eval/report.json", "eval/report.txt",
               "eval/confusion_matrix.png", "eval/predictions.tsv"):
    assert (workdir / name).is_file(), name
  assert (workdir / "tensorboard" / "train").is_dir()
  report = json.loads((workdir / "eval" / "report.json").read_text())
  dev = report["splits"]["dev"]
  assert 0.0 <= dev["accuracy"] <= 1.0 and set(dev["per_class"]) == set(report["labels"])
  assert "step 2/12 | loss" in first.stderr and "examples/s | ETA" in first.stderr
  # A healthy run's console: no TensorFlow start-up lines (E0000/W0000/I0000 from C++, once
  # per shared library), no per-checkpoint INFO, no traceback.
  lines = (first.stdout + first.stderr).splitlines()
  assert not [l for l in lines if l.startswith(("E0000", "W0000", "I0000", "WARNING: All log"))]
  assert not [l for l in lines if "Sharding callback" in l or "Traceback" in l]
  assert len(lines) == len(set(lines)), "a line printed twice"
  predictions = (workdir / "eval" / "predictions.tsv").read_text().splitlines()
  assert predictions[0].split("\t")[:5] == ["split", "origin", "label", "predicted", "probability"]
  dev_rows = [line.split("\t") for line in predictions[1:] if line.startswith("dev\t")]
  assert len(dev_rows) == dev["num_examples"] and all(len(r) == 6 for r in dev_rows)

  second = _run("tf_finetune.train", "--config=configs/smoke.py", f"--workdir={workdir}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "training already finished at step 12" in second.stderr

  evaluated = _run("tf_finetune.evaluate", f"--workdir={workdir}", "--checkpoint=latest")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "checkpoint step 12" in evaluated.stdout

  a_file = tmp_path / "a_file"  # an output path through a file: one line, not a traceback
  a_file.write_text("")
  explained = _run("tf_finetune.explain", f"--workdir={workdir}", f"--output={a_file}/x.html",
                   "a fine text")
  assert explained.returncode == 1 and "Traceback" not in explained.stderr
  assert explained.stderr.strip().splitlines()[-1] == (
      f"error: {a_file}: a file is there, where a directory is needed")


@pytest.mark.parametrize("flags,message", [
    (["--output=x"], "error: --file_source, --file_tag_scheme and --output go with --file"),
    (["--file_source=tsv"], "error: --file_source, --file_tag_scheme and --output go with "
                            "--file"),
    (["--file_tag_scheme=iob1"], "error: --file_source, --file_tag_scheme and --output go with "
                                 "--file"),
    (["--file=x.tsv", "--splits=dev"], "error: --file evaluates that file instead of the run's "
                                       "splits; drop --splits"),
    (["--positive_label=1"], "error: --positive_label goes with --slice_column"),
])
def test_evaluate_file_flags_that_do_not_go_together_are_refused(tmp_path, flags, message):
  result = _run("tf_finetune.evaluate", f"--workdir={tmp_path}", *flags)
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == message


@pytest.mark.parametrize("flag,message", [
    ("--config.train.batch_size=0", "error: config.train.batch_size=0: must be > 0"),
    ("--config.train.no_such_key=1", "error: unknown config key among --config.train.no_such_key"),
    ("--config.model.checkpoint=bert-base-uncased", "error: model.checkpoint='bert-base-uncased' is neither"),
    ("--config.distribution.strategy=tpu --config.distribution.tpu=local",
     "error: config.distribution.tpu='local': no TPU could be initialized (TPUs not found"),
])
def test_bad_config_fails_fast_with_one_line(tmp_path, flag, message):
  result = _run("tf_finetune.train", "--config=configs/smoke.py", *flag.split(),
                f"--workdir={tmp_path / 'w'}")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content, message", [
    (None, "error: --config={path}: no such file"),
    ("def get_config(:\n", "error: {path}:1: the config file does not parse: invalid syntax"),
    ("x = 1\n", "error: {path}: defines no get_config()"),
    ("def get_config():\n  return 5\n", "error: {path}: get_config() returned int, not an "
     "ml_collections.ConfigDict"),
    # A misspelt key set in the file was added to the ConfigDict and read by nothing: the run
    # trained with the default it was meant to replace.
    ("from tf_finetune import config\n\ndef get_config():\n  c = config.base_config()\n"
     "  c.train.learnig_rate = 1e-5\n  return c\n",
     "error: {path}:5: config.train.learnig_rate: unknown config key (did you mean "
     "train.learning_rate?)"),
    ("import ml_collections\nfrom tf_finetune import config\n\ndef get_config():\n"
     "  c = config.base_config()\n  c.trian = ml_collections.ConfigDict({'steps': 3})\n"
     "  return c\n",
     "error: {path}:6: config.trian: unknown config section (did you mean train?)"),
    # The config file's own code failing: before, a traceback, or a KeyError or a read of a
    # missing key taken for an unknown --config.KEY ("unknown config key among  (large)").
    ("SIZES = {'small': 8}\n\ndef get_config():\n  return SIZES['large']\n",
     "error: {path}:4: the config file raised KeyError: 'large'"),
    ("from tf_finetune import config\n\ndef get_config():\n  c = config.base_config()\n"
     "  c.train.steps = c.train.nosuch + 1\n  return c\n",
     "error: {path}:5: the config file raised AttributeError: "),
    ("def get_config():\n  raise ValueError('no data folder given')\n",
     "error: {path}:2: the config file raised ValueError: no data folder given"),
    ("import not_a_module_anywhere\n",
     "error: {path}:1: the config file raised ModuleNotFoundError: No module named "
     "'not_a_module_anywhere'"),
])
def test_a_bad_config_file_fails_with_one_line_naming_it(tmp_path, content, message):
  path = tmp_path / "my_config.py"
  if content is not None:
    path.write_text(content)
  result = _run("tf_finetune.train", f"--config={path}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 1
  assert message.format(path=path) in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_a_misspelt_config_key_names_the_key_it_resembles(tmp_path):
  result = _run("tf_finetune.train", "--config=configs/smoke.py", "--config.train.stepz=3",
                f"--workdir={tmp_path / 'w'}")
  assert ("error: unknown config key among --config.train.stepz (did you mean steps instead "
          "of stepz?)") in result.stderr


@pytest.mark.slow
def test_malformed_data_fails_with_file_and_line(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  (data / "train.tsv").write_text("sentence\tlabel\ngood\t1\nno tab here\n")
  result = _run("tf_finetune.train", "--config=configs/smoke.py", "--config.data.source=tsv",
                f"--config.data.dir={data}", "--config.data.train_file=train.tsv",
                "--config.data.dev_file=", "--config.data.text_column=sentence",
                f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 1
  assert f"error: {data / 'train.tsv'}:3: expected 2 fields" in result.stderr
  assert "Traceback" not in result.stderr
