import itertools
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import check_run_directory, tiny_config, write_sentiment_tsv
from tf_finetune import distribute
from tf_finetune import experiment
from tf_finetune.errors import WorkdirError
from tf_finetune.training import summaries
from tf_finetune.training import trainer as trainer_lib


def _weights(trainer):
  return [v.numpy().copy() for v in trainer.model.trainable_variables]


def test_one_step_changes_every_weight_group(sentiment_dir, tmp_path):
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=1), tmp_path / "run")
  before = _weights(t)
  t.train()
  after = _weights(t)
  changed = [not np.allclose(a, b) for a, b in zip(before, after)]
  # Every variable with a gradient moves (the segment embedding row 1 and position rows
  # beyond the batch's length do not, but each variable has some rows that do).
  assert np.mean(changed) > 0.95
  assert int(t.optimizer.iterations.numpy()) == 1


def test_interrupted_and_resumed_run_ends_with_same_weights(sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, train__steps=8, model__dropout=0.1, train__eval_every=4)
  straight = trainer_lib.Trainer(config, tmp_path / "straight")
  straight.train()
  interrupted = trainer_lib.Trainer(config, tmp_path / "resumed")
  interrupted.train(until_step=3)
  resumed = trainer_lib.Trainer(config, tmp_path / "resumed")
  assert resumed.step == 3
  resumed.train()
  assert resumed.step == 8
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_mirrored_two_replicas_equals_one_device(sentiment_dir, tmp_path):
  kwargs = dict(train__steps=4, data__shuffle_buffer=0, data__bucketing=False,
                train__eval_every=100)
  one = trainer_lib.Trainer(tiny_config(sentiment_dir, distribution__strategy="one_device", **kwargs),
                            tmp_path / "one")
  two = trainer_lib.Trainer(tiny_config(sentiment_dir, distribution__strategy="mirrored",
                                        distribution__num_cpu_devices=2, **kwargs),
                            tmp_path / "two")
  assert two.strategy.num_replicas_in_sync == 2
  for a, b in zip(_weights(one), _weights(two)):
    np.testing.assert_array_equal(a, b)
  one_losses, two_losses, fills = [], [], []
  for t, losses in ((one, one_losses), (two, two_losses)):
    iterator = iter(t.strategy.distribute_datasets_from_function(t._dataset_fn))
    step = t._build_train_step()
    for _ in range(4):
      loss, _, _, fill = step(iterator)
      losses.append(float(loss))
      fills.append(fill.numpy())
  np.testing.assert_allclose(one_losses, two_losses, atol=1e-5)
  # Packing's counts are summed over the replicas: the same tokens and examples a step.
  np.testing.assert_array_equal(np.array(fills[:4])[:, 2:4], np.array(fills[4:])[:, 2:4])
  assert (np.array(fills)[:, 3] == one.global_batch_size).all()
  for a, b in zip(_weights(one), _weights(two)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_resumed_mirrored_run_takes_up_the_batches_where_it_stopped(sentiment_dir, tmp_path):
  """Two local replicas read one input pipeline, two batches a step: a resume at step 4
  skips 8 of them, and the run ends with the uninterrupted run's weights bit for bit (it
  skipped 4 before, half the data it had trained on)."""
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4,
                       distribution__strategy="mirrored", distribution__num_cpu_devices=2)
  whole = trainer_lib.Trainer(config, tmp_path / "whole")
  assert whole.strategy.num_replicas_in_sync == 2
  whole.train()
  trainer_lib.Trainer(config, tmp_path / "cut").train(until_step=4)
  resumed = trainer_lib.Trainer(config, tmp_path / "cut")
  assert resumed.step == 4
  resumed.train()
  for a, b in zip(_weights(whole), _weights(resumed)):
    np.testing.assert_array_equal(a, b)


def test_mirrored_runs_of_differently_shaped_models_share_a_process(sentiment_dir, tmp_path):
  """A notebook may train one model, then another, under mirrored: the second run's
  reductions must not collide with the first's (collective ops keep process-global keys)."""
  for name, hidden in (("first", 32), ("second", 16)):
    config = tiny_config(sentiment_dir, train__steps=2, train__eval_every=100,
                         distribution__strategy="mirrored", model__hidden_dim=hidden,
                         model__intermediate_dim=2 * hidden)
    trainer = trainer_lib.Trainer(config, tmp_path / name)
    trainer.train()
    assert trainer.step == 2


def test_workdir_is_never_overwritten(sentiment_dir, tmp_path):
  run = tmp_path / "run"
  trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=2), run).train()
  with pytest.raises(WorkdirError, match=r"another config \(train.learning_rate: 0.001 -> 0.01"):
    trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=2, train__learning_rate=0.01), run)
  stranger = tmp_path / "stranger"
  stranger.mkdir()
  (stranger / "notes.txt").write_text("mine")
  with pytest.raises(WorkdirError, match="not empty and holds no tf_finetune run"):
    trainer_lib.Trainer(tiny_config(sentiment_dir), stranger)


def test_run_directory_and_tensorboard_events(sentiment_dir, tmp_path):
  run = tmp_path / "run"
  trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=6), run).train()
  assert json.loads((run / "labels.json").read_text()) == ["0", "1"]
  assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
  best = json.loads((run / "checkpoints" / "best.json").read_text())
  assert best["metric"] == "accuracy" and best["step"] in (3, 6)
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-6")
  # The best copy holds the weights of its step's checkpoint, and no optimizer state.
  best_copy = str(run / "checkpoints" / "best" / best["checkpoint"])
  same_step = str(run / "checkpoints" / f"ckpt-{best['step']}")
  assert not [n for n, _ in tf.train.list_variables(best_copy) if n.startswith("optimizer/")]
  assert [n for n, _ in tf.train.list_variables(same_step) if n.startswith("optimizer/")]
  model = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=6), run).model
  weights = []
  for path in ("best", same_step):
    for variable in model.trainable_weights:
      variable.assign(tf.zeros_like(variable))
    experiment.restore_model(experiment.Workdir(run), model, path)
    weights.append([v.numpy() for v in model.trainable_weights])
  assert len(weights[0]) > 10 and all(np.any(w) for w in weights[0][:3])
  for restored_best, restored_step in zip(*weights):
    np.testing.assert_array_equal(restored_best, restored_step)

  def scalars(sub):
    return {tag: values for (writer, tag), values in
            summaries.read_scalars(run / "tensorboard").items() if writer == sub}
  train = scalars("train")
  for tag in ("loss", "learning_rate", "grad_norm", "examples_per_sec"):
    assert [s for s, _ in train[tag]] == [1, 2, 3, 4, 5, 6], tag
  assert all(np.isfinite(v) and v > 0 for _, v in train["loss"])
  assert train["learning_rate"][-1][1] == 0.0  # linear decay ends at zero
  assert [s for s, _ in train["padding_percent"]] == [1, 2, 3, 4, 5, 6]  # packed by default
  assert all(0 <= v < 100 for _, v in train["padding_percent"])
  dev = scalars("eval")
  assert [s for s, _ in dev["accuracy"]] == [3, 6]
  assert dev["best_accuracy"] == [(best["step"], best["value"])]


def test_tensorboard_has_confusion_matrices_config_and_a_closed_hparams_session(
    sentiment_dir, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import plugin_data_pb2
  run = tmp_path / "run"
  config = tiny_config(sentiment_dir, train__steps=6)
  trainer_lib.Trainer(config, run).train()

  def events(sub):
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard" / sub),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    return acc
  images = events("eval").Tensors("confusion_matrix")
  assert [e.step for e in images] == [3, 6]  # one image per evaluation
  for e in images:
    width, height, png = tf.make_ndarray(e.tensor_proto)
    assert int(width) > 100 and int(height) > 100 and png.startswith(b"\x89PNG")
  root = events("")
  text = tf.make_ndarray(root.Tensors("config")[0].tensor_proto).item().decode()
  assert json.loads(text.strip("`\n")) == json.loads(config.to_json())

  def plugin_data(tag):
    content = root.SummaryMetadata(tag).plugin_data.content
    return plugin_data_pb2.HParamsPluginData.FromString(content)
  start = plugin_data("_hparams_/session_start_info").session_start_info
  assert start.hparams["train.steps"].number_value == 6
  experiment = plugin_data("_hparams_/experiment").experiment
  assert {m.name.tag for m in experiment.metric_infos} >= {"accuracy", "best_accuracy"}
  end = plugin_data("_hparams_/session_end_info").session_end_info
  assert end.status == 1  # STATUS_SUCCESS: the session is closed


def test_mixed_bfloat16_step_trains(sentiment_dir, tmp_path):
  import keras
  try:
    t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=2,
                                        train__precision="mixed_bfloat16"), tmp_path / "bf16")
    assert t.model.get_layer("logits").dtype_policy.name == "float32"
    backbone = [l for l in t.model.layers if l.name.startswith("bert_backbone")][0]
    assert backbone.dtype_policy.compute_dtype == "bfloat16"
    before = _weights(t)
    t.train()
    assert all(v.dtype == "float32" for v in t.model.trainable_variables)
    assert not np.allclose(before[0], _weights(t)[0])
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_tpu_step_compiles_with_xla_at_static_shapes(sentiment_dir, tmp_path):
  """What strategy=tpu changes, run on CPU: bfloat16 by default, static shapes, and a train
  step that XLA compiles (as a TPU must) once per bucket shape, with the plain step's result."""
  from tf_finetune import config as config_lib
  from tf_finetune.data import pipeline
  tpu_config = tiny_config(sentiment_dir, distribution__strategy="tpu", distribution__tpu="local",
                           train__precision="auto")
  assert distribute.resolved_precision(tpu_config)[0] == "mixed_bfloat16"
  assert config_lib.uses_static_shapes(tpu_config)

  config = tiny_config(write_sentiment_tsv(tmp_path / "varied", max_repeats=8),
                       data__static_shapes=True, data__max_seq_length=64)
  xla, plain = (trainer_lib.Trainer(config, tmp_path / name) for name in ("xla", "plain"))
  batches = list(itertools.islice(xla._dataset_fn(tf.distribute.InputContext()), 6))
  widths = {b - 1 for b in pipeline.bucket_boundaries(64)}
  assert all(b["token_ids"].shape[0] == 8 and b["token_ids"].shape[1] in widths for b in batches)
  shapes = {b["token_ids"].shape[1] for b in batches}
  assert len(shapes) > 1

  xla_step = tf.function(xla.replica_step, jit_compile=True)
  plain_step = tf.function(plain.replica_step)
  for batch in batches:
    xla_loss, _, _ = xla_step(batch)
    plain_loss, _, _ = plain_step(batch)
    np.testing.assert_allclose(float(xla_loss), float(plain_loss), rtol=1e-4)
  assert xla_step.experimental_get_tracing_count() == len(shapes)  # one compile per shape
  for a, b in zip(_weights(xla), _weights(plain)):
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert not np.allclose(_weights(xla)[0], _weights(trainer_lib.Trainer(
      config, tmp_path / "fresh"))[0])


def test_evaluation_on_replicas_matches_the_plain_path(sentiment_dir, tmp_path):
  """How a TPU evaluates: static-shape batches with padding rows, run on each replica,
  gathered in order; the padding rows are dropped."""
  from tf_finetune import experiment
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, data__static_shapes=True,
                                      distribution__strategy="mirrored",
                                      distribution__num_cpu_devices=2), tmp_path / "run")
  batch = next(iter(t.strategy.distribute_datasets_from_function(t._dataset_fn)))
  assert [v.shape[0] for v in t.strategy.experimental_local_results(batch["token_ids"])] == [4, 4]
  dev, labels = t.splits["dev"], t.dev_label_values
  _, distributed = experiment.evaluate_split(t.task, t.model, dev, label_values=labels,
                                             batch_size=6, static_shapes=True,
                                             strategy=t.strategy)
  _, plain = experiment.evaluate_split(t.task, t.model, dev, label_values=labels, batch_size=6)
  assert distributed.shape == plain.shape == (len(dev), 2)  # 16 = 6 + 6 + 4 (+2 padding)
  np.testing.assert_allclose(distributed, plain, atol=1e-5)
  report = t.evaluate_dev()
  assert report["num_examples"] == len(dev)


@pytest.mark.parametrize("strategy,replicas", [("default", 1), ("one_device", 1), ("mirrored", 2)])
def test_run_directory_contract_under_each_strategy(sentiment_dir, tmp_path, strategy, replicas):
  """What train does (train, then the chief evaluates), under each strategy that runs here;
  multi_worker: tests/test_multi_worker.py."""
  from tf_finetune import train
  run = tmp_path / strategy
  t = train.train_and_evaluate(tiny_config(
      sentiment_dir, train__steps=4, train__eval_every=2, distribution__strategy=strategy,
      distribution__num_cpu_devices=replicas), run)
  assert t.is_chief and t.strategy.num_replicas_in_sync == replicas
  check_run_directory(run, last_step=4)


@pytest.mark.parametrize("strategy,best_is_last", [("default", True), ("default", False),
                                                   ("mirrored", False)])
def test_report_after_training_reuses_the_trainers_model_and_equals_a_fresh_evaluation(
    sentiment_dir, tmp_path, monkeypatch, best_is_last, strategy):
  """train's report pass runs on the trainer's model (restored to the best checkpoint when a
  later step ran) and the splits it read, with the dev logits of the last evaluation when it
  was of the best, and writes what `evaluate` writes for that checkpoint from a model built
  anew."""
  from tf_finetune import experiment
  from tf_finetune import train
  from tf_finetune.evaluation import evaluator
  evaluate_dev = trainer_lib.Trainer.evaluate_dev

  def scripted_accuracy(trainer):  # the real evaluation; then dev accuracy rises or falls
    accuracy = trainer.step / 10 if best_is_last else 1 - trainer.step / 10
    return dict(evaluate_dev(trainer), accuracy=accuracy)
  monkeypatch.setattr(trainer_lib.Trainer, "evaluate_dev", scripted_accuracy)
  reused = {}
  best_run = trainer_lib.Trainer.best_run

  def recorded_best_run(trainer):
    reused["run"], reused["known"] = best_run(trainer)
    return reused["run"], reused["known"]
  monkeypatch.setattr(trainer_lib.Trainer, "best_run", recorded_best_run)
  load_run, load_data = experiment.load_run, experiment.load_data
  monkeypatch.setattr(experiment, "load_run", lambda *a, **k: pytest.fail("model built again"))
  data_loads = []
  monkeypatch.setattr(experiment, "load_data",
                      lambda *a, **k: data_loads.append(a) or load_data(*a, **k))
  run = tmp_path / "run"
  t = train.train_and_evaluate(tiny_config(
      sentiment_dir, train__steps=4, train__eval_every=2, data__test_file="train.tsv",
      train__eval_splits="dev,test",
      train__precision="float32", distribution__strategy=strategy,
      distribution__num_cpu_devices=2), run)
  assert reused["run"].model is t.model and reused["run"].step == (4 if best_is_last else 2)
  assert list(reused["known"]) == (["dev"] if best_is_last else [])
  assert len(data_loads) == 1  # the report evaluates the splits the trainer read
  written = {name: (run / "eval" / name).read_text()
             for name in ("report.json", "report.txt", "predictions.tsv")}
  monkeypatch.setattr(experiment, "load_run", load_run)
  evaluator.evaluate_workdir(run)
  for name, text in written.items():
    assert (run / "eval" / name).read_text() == text, name


def test_report_after_mixed_precision_training_builds_a_float32_model(sentiment_dir, tmp_path):
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=2, train__eval_every=2,
                                      train__precision="mixed_bfloat16"), tmp_path / "run")
  t.train()
  assert t.best_run() == (None, {})


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_accumulated_micro_batches_give_the_big_batch_update(sentiment_dir, tmp_path, strategy):
  """k micro-batches of b, one update == one batch of k * b (dropout off, same data order)."""
  runs = {}
  for name, accum in (("big", 1), ("accumulated", 4)):
    config = tiny_config(sentiment_dir, train__steps=3, train__batch_size=8,
                         train__grad_accum_steps=accum, train__eval_every=100,
                         data__bucketing=False, data__shuffle_buffer=0,
                         distribution__strategy=strategy)
    runs[name] = trainer_lib.Trainer(config, tmp_path / name)
    runs[name].train()
  assert runs["accumulated"].micro_batch_size == 2
  before = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=3, train__batch_size=8),
                               tmp_path / "untrained")
  moved = 0
  for a, b, c in zip(_weights(runs["big"]), _weights(runs["accumulated"]), _weights(before)):
    np.testing.assert_allclose(a, b, atol=1e-5)
    moved += not np.allclose(a, c, atol=1e-4)
  assert moved > 10


def test_accumulation_resumes_at_the_right_batch(sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, train__steps=4, train__batch_size=8,
                       train__grad_accum_steps=2, train__eval_every=100)
  straight = trainer_lib.Trainer(config, tmp_path / "straight")
  straight.train()
  trainer_lib.Trainer(config, tmp_path / "resumed").train(until_step=2)
  resumed = trainer_lib.Trainer(config, tmp_path / "resumed")
  resumed.train()
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse sse2 avx avx2 fma", False), ("fpu sse avx2 avx512f avx512_vnni", True),
    ("fpu sse avx2 avx_vnni", True), ("fpu sse avx512f amx_tile amx_int8", True)])
def test_tensorflow_alone_turns_onednn_on_only_on_cpus_with_its_flags(tmp_path, flags, expected):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
  assert distribute.tensorflow_onednn_default(str(cpuinfo)) == expected


@pytest.mark.parametrize("user_setting", [None, "0", "1"])
def test_onednn_kernels_are_our_default_on_x86_linux_and_the_users_setting_wins(user_setting):
  if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
    pytest.skip("the default applies to x86-64 Linux only")
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_ENABLE_ONEDNN_OPTS", "_TF_FINETUNE_ONEDNN")}
  if user_setting is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
  probe = ("import json, tf_finetune, tensorflow; from tf_finetune import distribute; "
           "print(json.dumps(distribute.onednn_kernels()))")
  out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                       check=True).stdout
  on, why = json.loads(out.strip().splitlines()[-1])
  assert on == (user_setting != "0")
  if user_setting is None:
    assert "tf_finetune's default" in why and "TF_ENABLE_ONEDNN_OPTS=0" in why
  else:
    assert why == f"TF_ENABLE_ONEDNN_OPTS={user_setting} set before the start"
  # A child process inherits our default as a default, and a setting as a setting.
  probe_child = (f"import subprocess, sys; import tf_finetune; "
                 f"subprocess.run([sys.executable, '-c', {probe!r}], check=True)")
  out = subprocess.run([sys.executable, "-c", probe_child], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert json.loads(out.strip().splitlines()[-1]) == [on, why]


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse avx512f avx512_bf16 amx_tile amx_bf16", "mixed_bfloat16"),
    ("fpu sse avx2 avx512f avx512_vnni", "float32")])
def test_auto_precision_is_bfloat16_where_the_cpu_computes_it(tmp_path, monkeypatch, caplog,
                                                              flags, expected):
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("a GPU decides, not the CPU flags")
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
  native, what = distribute.native_bfloat16("default", cpuinfo=str(cpuinfo))
  assert native == (expected == "mixed_bfloat16") and ("amx_bf16" in what) == native
  monkeypatch.setattr(distribute, "native_bfloat16", lambda name: (native, what))
  config = tiny_config(write_sentiment_tsv(tmp_path / "data"), train__precision="auto")
  assert distribute.resolved_precision(config) == (expected, f"train.precision=auto: {what}")
  import keras
  with caplog.at_level("INFO", logger="absl"):
    t = trainer_lib.Trainer(config, tmp_path / "run")
  onednn, why = distribute.onednn_kernels()
  assert f"Precision: {expected} (train.precision=auto: {what})" in caplog.text
  assert f"oneDNN kernels: {'on' if onednn else 'off'} ({why})" in caplog.text
  backbone = [l for l in t.model.layers if l.name.startswith("bert_backbone")][0]
  assert backbone.dtype_policy.name == expected
  assert keras.config.dtype_policy().name == "float32"  # the process's policy is left alone
  t.close()


def test_evaluate_on_a_held_out_file_reports_it_apart_from_the_runs_splits(sentiment_dir,
                                                                             tmp_path):
  """`evaluate --file`: a labelled file the run did not read, read as its data files are,
  gives the metrics the run's own test split gives for the same rows, in
  eval/<file name>/, leaving the run's eval/ files as they were; its labels must be the
  run's; another file's report is not overwritten."""
  from tf_finetune import train
  from tf_finetune.errors import ConfigError, DataError
  from tf_finetune.evaluation import evaluator
  held_out = tmp_path / "held_out"
  write_sentiment_tsv(held_out, seed=5)
  run = tmp_path / "run"
  train.train_and_evaluate(tiny_config(
      sentiment_dir, train__steps=4, train__eval_every=2,
      data__test_file=str(held_out / "dev.tsv"), train__eval_splits="dev,test"), run)
  own = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}
  report = evaluator.evaluate_file(run, held_out / "dev.tsv")
  assert {p.name: p.read_bytes() for p in (run / "eval").iterdir() if p.is_file()} == own
  written = json.loads((run / "eval" / "dev.tsv" / "report.json").read_text())
  assert written["file"] == str(held_out / "dev.tsv") and written["data_source"] == "tsv"
  as_test = json.loads(own["report.json"])["splits"]["test"]
  assert report["splits"]["dev.tsv"] == written["splits"]["dev.tsv"] == as_test
  predictions = (run / "eval" / "dev.tsv" / "predictions.tsv").read_text().splitlines()
  assert len(predictions) == 1 + 16 and predictions[1].startswith(
      f"dev.tsv\t{held_out / 'dev.tsv'}:2\t")
  evaluator.evaluate_file(run, held_out / "dev.tsv")  # the same file again: rewritten
  other = tmp_path / "other" / "dev.tsv"
  write_sentiment_tsv(other.parent, seed=6)
  with pytest.raises(WorkdirError, match=f"holds the report of {held_out / 'dev.tsv'}, not of "
                     f"{other}; choose another --output"):
    evaluator.evaluate_file(run, other)
  with pytest.raises(WorkdirError, match="holds the report of the run's own splits"):
    evaluator.evaluate_file(run, other, output=str(run / "eval"))
  unseen = tmp_path / "unseen.tsv"
  unseen.write_text("sentence\tlabel\na fine film\t1\nan odd one\t7\n")
  with pytest.raises(DataError, match=f"^{unseen}:3: label '7' of the unseen.tsv split is not "
                     "among the 2 labels seen in train"):
    evaluator.evaluate_file(run, unseen)
  # A file in another format gets the flag of evaluate that reads it, not a config key.
  for delimiter, way in [(",", "give --file_source=csv"),
                         (";", "write it with tabs (--file_source=tsv) or commas")]:
    written = tmp_path / f"written{delimiter}.tsv"
    written.write_text(f"sentence{delimiter}label\na fine film{delimiter}1\n")
    with pytest.raises(DataError) as e:
      evaluator.evaluate_file(run, written)
    assert str(e.value).startswith(
        f"{written}:1: no text column 'sentence' in header ['sentence{delimiter}label']; the "
        f"header is one column holding {delimiter!r}: if that separates the columns, {way}")
    assert "data.delimiter" not in str(e.value)
  bbc = tmp_path / "bbc"
  train.train_and_evaluate(tiny_config(sentiment_dir, data__source="bbc_news",
                                       data__max_train_examples=40, train__steps=1), bbc)
  with pytest.raises(ConfigError, match=f"^--file_source: {bbc} read data.source='bbc_news', "
                     "so say how"):
    evaluator.evaluate_file(bbc, held_out / "dev.tsv")
  news = tmp_path / "news.csv"
  news.write_text('sentence,label\n"Shares fell, and the bank cut rates.",business\n')
  only = evaluator.evaluate_file(bbc, news, source="csv")["splits"]["news.csv"]
  assert only["num_examples"] == 1
