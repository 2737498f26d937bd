"""The training loop: a tf.function GradientTape step under any tf.distribute strategy.

What a run survives (README "Failure modes"): a non-finite loss or gradient norm stops it
within the step (the step is not applied; train.skip_nonfinite_steps may skip a few, and
train.divergence_rollbacks go back to the last checkpoint and leave out the data since), and
so does a finite loss whose moving average climbs past train.divergence_loss_ratio times the
first step's;
SIGTERM and Ctrl-C save a checkpoint at the next step boundary; a second trainer on the
same workdir is refused (workdir_lock); the best-checkpoint state and the early-stopping
counter live in the training checkpoint, so a resumed run counts every evaluation once.
"""
import copy
import json
import math
import pathlib
import re
import shutil
import signal
import tempfile
import threading
import time
import weakref

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import atomic
from tf_finetune import config as config_lib
from tf_finetune import distribute
from tf_finetune import experiment
from tf_finetune import peft
from tf_finetune import plots
from tf_finetune import privacy
from tf_finetune import progress
from tf_finetune import workdir_lock
from tf_finetune.data import augment
from tf_finetune.data import packing
from tf_finetune.data import pipeline
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, Interrupted, TrainingError, WorkdirError
from tf_finetune.errors import STORAGE_FAILURES, storage_failure
from tf_finetune.training import adversarial
from tf_finetune.training import distill
from tf_finetune.training import dp_sgd
from tf_finetune.training import nonfinite
from tf_finetune.training import optim
from tf_finetune.training import resume
from tf_finetune.training import summaries

# Keys a resumed run may change; any other difference would make the resumed run a
# different experiment than the checkpoint's.
RESUMABLE_CHANGES = {"train.log_every", "train.eval_splits", "train.eval_batch_size",
                     "train.skip_nonfinite_steps", "train.divergence_rollbacks",
                     "train.divergence_loss_ratio", "distribution.cluster_wait_seconds"}


# train.divergence_loss_ratio's moving average of the training loss: about the last 10 steps.
LOSS_AVERAGE_DECAY = 0.9

# What a collective step raises under multi_worker when another worker is gone (its
# connection reset, its heartbeats stopped, or it restarted as a new incarnation).
CLUSTER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                    tf.errors.DeadlineExceededError)


class Preempted(Interrupted):
  """SIGTERM or SIGINT arrived; a checkpoint was saved at the step boundary."""

  def __init__(self, signum, step, path):
    name = signal.Signals(signum).name
    super().__init__(f"{name} received: saved {path} at step {step}; run the same command "
                     "to resume", exit_code=128 + signum)


class Trainer:
  """Fine-tunes `config` into `workdir`; a second Trainer on the same workdir resumes."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = experiment.Workdir(workdir)
    self.strategy = distribute.get_strategy(config.distribution)
    self.is_chief = distribute.is_chief(self.strategy)
    self._restored_without_run_state = False
    self._resumed_with = []  # the RESUMABLE_CHANGES of a resumed run, "key: old -> new"
    # Other workers write their (collective) saves and summaries here; nobody reads them.
    self._scratch = None if self.is_chief else tempfile.mkdtemp(prefix="tf_finetune_worker_")
    self.lock = workdir_lock.WorkdirLock(self.workdir.root).acquire() if self.is_chief else None
    if self.lock is not None:  # a Trainer dropped without train() or close() lets go too
      weakref.finalize(self, self.lock.release)
    global_policy = keras.config.dtype_policy()
    try:
      self._setup()  # builds the model under train.precision's policy
    except BaseException:
      self._release()
      raise
    finally:  # models built later in this process (evaluation, export) get their own
      keras.config.set_dtype_policy(global_policy)

  def _setup(self):
    self.resuming = self._check_workdir()  # may set self.config (a resumed older run)
    config = self.config
    if self.is_chief:
      self._remove_leftovers()
    keras.utils.set_random_seed(config.train.seed)
    self.precision, why = distribute.resolved_precision(config)
    logging.info("Precision: %s (%s)", self.precision, why)
    onednn, why = distribute.onednn_kernels()
    logging.info("oneDNN kernels: %s (%s)", "on" if onednn else "off", why)
    keras.mixed_precision.set_global_policy(self.precision)
    self.static_shapes = config_lib.uses_static_shapes(config)

    labels = self.workdir.load_labels() if self.resuming else None
    self.splits, self.labels = experiment.load_data(config, labels)
    if self.resuming:
      experiment.check_data_digest(self.workdir, self.splits)
      experiment.check_model_digest(self.workdir, config, weights=True)
    elif self.is_chief:  # of the files build_model reads next; written with the run's files
      self._model_digest = experiment.model_digest(config)
    self.encoder = experiment.build_encoder(config)

    t = config.train
    replicas = self.strategy.num_replicas_in_sync
    self.accum_steps = t.grad_accum_steps
    if t.batch_size % (replicas * self.accum_steps):
      raise ConfigError(f"config.train.batch_size={t.batch_size}: must be divisible by the "
                        f"{replicas} replicas of distribution.strategy="
                        f"{config.distribution.strategy!r} times train.grad_accum_steps="
                        f"{self.accum_steps}")
    if self.static_shapes and t.eval_batch_size % replicas:
      raise ConfigError(f"config.train.eval_batch_size={t.eval_batch_size}: must be divisible "
                        f"by the {replicas} replicas of distribution.strategy="
                        f"{config.distribution.strategy!r}")
    self.global_batch_size = t.batch_size  # examples per optimizer step
    self.micro_batch_size = t.batch_size // self.accum_steps  # per forward/backward pass

    with self.strategy.scope():
      self.task, self.model = experiment.build_model(config, self.labels, self.encoder)
    # task.wise_ft_alpha: the weights the run starts from (the checkpoint's, before a resume
    # restores its own), which each evaluation mixes with the trained ones.
    self._start_weights = ([v.numpy() for v in self.model.trainable_variables]
                          if self.task.interpolates_weights else None)
    self._head_step = None  # the step whose weights task.fit_head last fitted the head on
    # Training examples are texts, their windows (data.long_text=windows) or pairs (setfit).
    self.num_train_examples = self.task.train_rows(self.splits["train"])
    self.steps_per_epoch = max(1, self.num_train_examples // t.batch_size)
    self.total_steps = config_lib.total_steps(config, self.num_train_examples)
    self.eval_every = t.eval_every or self.steps_per_epoch
    self.checkpoint_every = t.checkpoint_every or self.eval_every
    with self.strategy.scope():
      encoder = peft.backbone(self.model)
      # The head is every weight outside these (its own rate, and DP-SGD's own clip).
      encoder_paths = frozenset(v.path for v in encoder.variables)
      self.optimizer = optim.build_optimizer(
          t, self.total_steps, self.model.trainable_variables, num_layers=encoder.num_layers,
          encoder_paths=encoder_paths)
    for name, split in self.splits.items():
      self.task.log_lengths(name, split)
    self.teacher = None
    if config.distill.teacher_workdir:
      with self.strategy.scope():
        self.teacher = distill.load_teacher(config, self.labels)
      if not experiment.latest_checkpoint(self.workdir):
        distill.initialize_student(config, self.model, self.teacher)
    self.adversarial = None
    if config.adversarial.method != "none":
      self.adversarial = adversarial.AdversarialLoss(config, self.model)
    self.dp_sgd = None
    if config.privacy.method == "dp_sgd":
      self.privacy_plan = privacy.plan(config, self.num_train_examples)
      privacy.log_plan(self.privacy_plan, self.total_steps, config.privacy.target_epsilon)
      self.dp_sgd = dp_sgd.DpSgd(self.privacy_plan, config.privacy.per_example, t.seed,
                                 encoder_paths=encoder_paths,
                                 token_labels=self.task.token_labels)
      first = self.splits["train"].subset([0])
      example = next(iter(pipeline.eval_dataset(first, self.task.label_values(first), self.task,
                                                batch_size=1)))
      self.private_variables = dp_sgd.connected_variables(
          self._losses_of, example, self.model.trainable_variables)
      self.dp_sgd.check_groups(self.private_variables)
    # The best-checkpoint state and the evaluation counter are saved with the model, so a
    # resumed run restores them as of its checkpoint and counts a redone evaluation once.
    self.run_state = {
        name: tf.Variable(tf.constant(value, dtype), trainable=False, name=name)
        for name, value, dtype in (
            ("best_value", float("nan"), tf.float64), ("best_step", -1, tf.int64),
            ("evaluations_without_improvement", 0, tf.int64),
            ("stopped_early_at_step", -1, tf.int64), ("nonfinite_steps", 0, tf.int64),
            # train.divergence_rollbacks: rollbacks so far, and the global batches they left
            # out (the data stream is at step + batches_left_out).
            ("divergence_rollbacks", 0, tf.int64), ("batches_left_out", 0, tf.int64),
            # What the next logged step averages (_LogWindow.keep), so that a run resumed
            # between two logged steps logs what an uninterrupted run logs; and the loss's
            # moving average of train.divergence_loss_ratio, with the first step's loss.
            ("window_loss", 0.0, tf.float64), ("window_steps", 0, tf.int64),
            ("window_fill", np.zeros(5), tf.float64), ("window_fill_steps", 0, tf.int64),
            ("first_loss", float("nan"), tf.float64),
            ("loss_average", float("nan"), tf.float64))}
    self.checkpoint = experiment.new_checkpoint(self.model, self.optimizer,
                                                run_state=self.run_state)
    # Every worker resumes from the chief's checkpoint, so a restarted worker rejoins in step.
    latest = resume.restore_newest_intact(self.workdir, self._restore, repair=self.is_chief)
    self.resumed_from = latest
    if latest:
      logging.info("Resuming from %s at step %d of %d", latest, self.step, self.total_steps)
    self.manager = self._new_manager()  # after the resume, which may rewrite its state file
    # Two kept: a new best is saved, then best.json is rewritten to name it, and only the
    # next new best deletes the one before; no kill leaves best.json naming a missing file.
    # The weights only: evaluation and export read nothing else, and training resumes from
    # checkpoints/ (the optimizer's moments would triple each copy).
    if self.is_chief:
      resume.repair_best_state(self.workdir)
    self.best_manager = tf.train.CheckpointManager(
        experiment.new_checkpoint(self.model), self._side_effect_dir(self.workdir.best),
        max_to_keep=2)
    self.best = self._load_best()
    if self.is_chief and latest:
      self._rewrite_unreadable_best_json(latest)
    if self.is_chief:
      summaries.drop_events_after(self.workdir.tensorboard, self.step if latest else None,
                                  reopen_session=not self._finished())
    self.writers = summaries.Writers(self._side_effect_dir(self.workdir.tensorboard))
    self.augmenter = None
    if config.data.augment == "eda":
      self.augmenter = augment.Augmenter(self.splits["train"].texts,
                                         config.data.augment_probability, t.seed)
    self.train_label_values = self.task.label_values(self.splits["train"])
    self.task.prepare(self.train_label_values)
    self.dev_label_values = self.task.label_values(self.splits["dev"])
    self._dev_logits = (None, None)  # (step, dev logits) of the last evaluate_dev
    if "test" in self.splits:  # unseen labels fail now, not after training.
      self.task.label_values(self.splits["test"])
    refusal = self.task.packing_refusal()
    self.packing = not refusal
    if not self.packing:
      logging.info("Packing: off: %s", refusal)

  def _new_manager(self):
    return tf.train.CheckpointManager(
        self.checkpoint, self._side_effect_dir(self.workdir.checkpoints),
        max_to_keep=self.config.train.keep_checkpoints)

  def _restore(self, path):
    """Restores a training checkpoint; those of runs made before run_state (or a part of it)
    was kept in the checkpoint restore what they hold, the rest keeps its start value."""
    try:
      saved = {n.split("/")[1] for n, _ in tf.train.list_variables(path)
               if n.startswith("run_state/")}
    except (tf.errors.OpError, ValueError):
      saved = set(self.run_state)  # restore_checkpoint says what is wrong with the checkpoint
    kept = {k: v for k, v in self.run_state.items() if k in saved}
    # Not self.checkpoint: under multi_worker, PreemptionCheckpointHandler adds its own
    # variable to it, which a checkpoint saved before (ckpt-0, a rollback's target) lacks.
    checkpoint = experiment.new_checkpoint(self.model, self.optimizer, **(
        {"run_state": kept} if kept else {}))
    experiment.restore_checkpoint(checkpoint, path, self.workdir, resuming=True)
    self._restored_without_run_state = "best_step" not in saved

  def _finished(self):
    """Has the run trained to its end (train.steps, or stopped early), or does it train
    nothing?"""
    return not self.task.trains or self.step >= self.total_steps or bool(
        (self.best or {}).get("stopped_early_at_step"))

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  def _side_effect_dir(self, path):
    """The chief writes into the workdir; other workers into their scratch directory."""
    if self.is_chief:
      return str(path)
    return str(pathlib.Path(self._scratch) / path.relative_to(self.workdir.root))

  def _check_workdir(self):
    """Is this a resumed run? On a resumed one, refuses a changed config; on a new one, a
    non-empty directory (only the chief checks that: it creates the directory)."""
    wd = self.workdir
    resolved = json.loads(self.config.to_json())
    if wd.config.is_file() and not wd.labels.is_file():
      raise WorkdirError(f"{wd.root}: config.json but no labels.json; the run directory is "
                         "damaged")
    if wd.config.is_file():
      self._keep_values_of_keys_added_since(wd)
      resolved = json.loads(self.config.to_json())
      saved = json.loads(wd.load_config().to_json())  # keys added since: their defaults
      a, b = config_lib.flatten(saved), config_lib.flatten(resolved)
      changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                       and k not in RESUMABLE_CHANGES)
      if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
        raise WorkdirError(f"{wd.root} holds a run with another config ({diffs}); resume it "
                           "with the same config or choose a new --workdir")
      self._resumed_with = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(
          RESUMABLE_CHANGES) if a.get(k) != b.get(k)]
      return True
    if self.is_chief and wd.root.exists():
      self._remove_unfinished_start()
      if any(p.name != workdir_lock.LOCK_FILE for p in wd.root.iterdir()):
        raise WorkdirError(f"{wd.root} is not empty and holds no tf_finetune run; "
                           "choose a new --workdir")
    return False

  def _keep_values_of_keys_added_since(self, wd):
    """A run made before a key whose default changed what the code did resumes with the
    value it was made with (config.VALUES_BEFORE_THE_KEY), unless the command sets another
    value than the default."""
    defaults = config_lib.flatten(config_lib.base_config().to_dict())
    current = config_lib.flatten(self.config.to_dict())
    kept = {key: value for key, value in wd.values_before_keys().items()
            if current[key] == defaults[key] != value}
    if kept:
      self.config = config_lib.override(copy.deepcopy(self.config), kept)
      logging.info("%s: made before %s; resuming with what it was made with: %s", wd.config,
                   ", ".join(kept), ", ".join(f"{k}={v!r}" for k, v in kept.items()))

  def _remove_unfinished_start(self):
    """A start killed while it wrote its run files left data_digest.json (written first) and
    maybe model_digest.json, labels.json and the few-shot sample, or only a temporary file of
    the first, but no config.json: a directory the same command would refuse as not a run.
    When it holds those files and nothing else, they are removed and the run starts anew."""
    wd = self.workdir
    temporaries = set(atomic.stale_temporaries(wd.root))
    run_files = {wd.data_digest, wd.model_digest, wd.labels, wd.train_sample}
    entries = sorted(p for p in wd.root.iterdir() if p.name != workdir_lock.LOCK_FILE)
    if not entries or any(p not in run_files | temporaries for p in entries):
      return
    if any(p in run_files for p in entries):  # ours only with our digest among them
      try:
        experiment.read_data_digest(wd)
      except (OSError, WorkdirError):  # missing, or not ours
        return
    for path in entries:
      path.unlink()
    logging.warning("%s: removed %s, written by a start that was stopped before it wrote "
                    "config.json; starting anew", wd.root, ", ".join(p.name for p in entries))

  def _write_run_files(self):
    """data_digest.json (first: it marks a start in progress, see _remove_unfinished_start),
    model_digest.json, labels.json, the few-shot sample, then config.json (which marks a run
    directory), each written atomically."""
    if not self.is_chief:
      return
    if self.resuming:
      if self._resumed_with:  # config.json holds the settings in force
        logging.info("%s: resuming with %s", self.workdir.config, ", ".join(self._resumed_with))
        atomic.write_text(self.workdir.config, self.config.to_json(indent=1) + "\n")
      return
    self.workdir.root.mkdir(parents=True, exist_ok=True)
    experiment.write_data_digest(self.workdir, self.splits)
    experiment.write_model_digest(self.workdir, self._model_digest)
    self.labels.save(self.workdir.labels)
    if self.config.data.examples_per_class:
      train = self.splits["train"]
      sources.write_tsv(self.workdir.train_sample, ["origin", "label", "text"],
                        zip(train.origins, train.labels, train.texts))
    atomic.write_text(self.workdir.config, self.config.to_json(indent=1) + "\n")

  def _remove_leftovers(self):
    """Removes what killed processes left: half-written checkpoint directories
    (ckpt-N_temp) and temporary files of atomic writes whose process is gone."""
    for path in sorted(self.workdir.checkpoints.rglob("*_temp")) if \
        self.workdir.checkpoints.is_dir() else []:
      if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        logging.warning("Removed %s, a checkpoint a killed process had not finished writing",
                        path)
    for path in atomic.stale_temporaries(self.workdir.root):
      path.unlink(missing_ok=True)
      logging.warning("Removed %s, left by a killed process", path)

  def _load_best(self):
    """The best checkpoint's state as of the restored training checkpoint (run_state); runs
    made before it was kept there: checkpoints/best.json. A checkpoint with run_state but no
    best yet has none: best.json may be of an evaluation after it, which this run redoes."""
    state = {k: v.numpy().item() for k, v in self.run_state.items() if v.shape.rank == 0}
    if state["best_step"] >= 0:
      best = {"step": state["best_step"], "metric": self.task.best_metric,
              "value": state["best_value"], "checkpoint": f"ckpt-{state['best_step']}",
              "evaluations_without_improvement": state["evaluations_without_improvement"]}
      if state["stopped_early_at_step"] >= 0:
        best["stopped_early_at_step"] = state["stopped_early_at_step"]
      if not (self.workdir.best / f"{best['checkpoint']}.index").is_file():
        # Two new bests after the checkpoint (of steps now undone) replaced it in best/.
        logging.warning("%s: the best checkpoint as of step %d, %s, is gone (replaced by later "
                        "bests of steps this run does again); the best is chosen anew from "
                        "the next evaluation", self.workdir.best, self.step, best["checkpoint"])
        for name, value in (("best_value", float("nan")), ("best_step", -1),
                            ("evaluations_without_improvement", 0)):
          self.run_state[name].assign(value)
        return None
      return best
    if self._restored_without_run_state and self.workdir.best_json.is_file():
      return experiment.read_best(self.workdir)
    return None

  def _rewrite_unreadable_best_json(self, restored):
    """best.json writes out the restored checkpoint's record of the best; missing or damaged,
    it is written anew from that record. One that reads but differs is left: it may be of an
    evaluation after the checkpoint, which this run does again and rewrites it."""
    if self.best is None or self._restored_without_run_state:
      return
    try:
      experiment.read_best(self.workdir)
      return
    except FileNotFoundError:
      why = f"{self.workdir.best_json}: missing"
    except WorkdirError as e:
      why = str(e)
    logging.warning("%s; written anew from the record of the best in %s (%s %.4f at step %d)",
                    why, restored, self.best["metric"], self.best["value"], self.best["step"])
    self._write_best()

  def _save_best_state(self):
    b = self.best
    self.run_state["best_value"].assign(b["value"])
    self.run_state["best_step"].assign(b["step"])
    self.run_state["evaluations_without_improvement"].assign(b["evaluations_without_improvement"])
    self.run_state["stopped_early_at_step"].assign(b.get("stopped_early_at_step", -1))

  def _dataset_fn(self, input_context):
    t = self.config.train
    if self.dp_sgd is not None:
      pipelines = input_context.num_input_pipelines
      return pipeline.poisson_train_dataset(
          self.splits["train"], self.train_label_values, self.task,
          sampling_rate=self.privacy_plan.sampling_rate,
          capacity=self.privacy_plan.capacity // pipelines,
          micro_batches=self.accum_steps * input_context.num_replicas_in_sync // pipelines,
          seed=t.seed, start_step=self.step, input_context=input_context)
    self._input_context = input_context
    data_step = self.step + int(self.run_state["batches_left_out"].numpy())
    return self._train_batches(input_context, data_step)

  def _batches_per_step(self, input_context):
    """Batches a step takes from this input pipeline: one per replica it feeds (two local
    GPUs: two) and micro-batch."""
    return self.accum_steps * (input_context.num_replicas_in_sync //
                               input_context.num_input_pipelines)

  def _train_batches(self, input_context, data_step, example_index=False):
    """This input pipeline's batches from those of step data_step + 1 of the data stream on."""
    t, d = self.config.train, self.config.data
    return pipeline.train_dataset(
        self.splits["train"], self.train_label_values, self.task,
        batch_size=input_context.get_per_replica_batch_size(self.micro_batch_size),
        seed=t.seed, shuffle_buffer=d.shuffle_buffer, bucketing=d.bucketing,
        skip_batches=data_step * self._batches_per_step(input_context),
        input_context=input_context, static_shapes=self.static_shapes,
        augmenter=self.augmenter, packing=self.packing, example_index=example_index)

  def _batches_of_step(self, input_context, step):
    """This input pipeline's batches of `step` (from 1), each row's "example_index" with them."""
    data_step = step - 1 + int(self.run_state["batches_left_out"].numpy())
    return list(self._train_batches(input_context, data_step, example_index=True).take(
        self._batches_per_step(input_context)))

  def _examples_of(self, step):
    """What nonfinite.describe says of the train examples of `step` (this worker's share of
    them under multi_worker), or why they cannot be named."""
    if self.dp_sgd is not None:  # its sample is drawn per step, not read from a stream
      return "the examples of a DP-SGD step are not named"
    context = self._input_context
    logging.info("Reading the data stream to step %d's batches to name its examples", step)
    try:
      with self.strategy.scope():
        return nonfinite.describe(
            self.task, self.model, self._batches_of_step(context, step), self.splits["train"],
            worker=None if context.num_input_pipelines == 1 else
            (context.input_pipeline_id, context.num_input_pipelines))
    except Exception as e:  # pylint: disable=broad-except; the divergence is still reported
      return f"its examples could not be named ({type(e).__name__}: {e})"

  def _gradients(self, batch, denominator):
    """This replica's share of the loss and its gradients on one micro-batch; the summed
    losses are divided by the whole optimizer step's denominator, so gradients just add up."""
    model, task = self.model, self.task
    features = {k: batch[k] for k in experiment.MODEL_INPUTS}
    if self.teacher is not None:
      teacher_logits = self.teacher(features, training=False)
      losses_of = lambda logits: distill.distillation_losses(
          self.config, task, batch["label"], logits, teacher_logits)
    else:
      losses_of = lambda logits: task.training_losses(batch["label"], logits)
    loss_of = lambda logits: tf.reduce_sum(losses_of(logits)) / denominator
    if self.adversarial is not None:  # loss(x) + loss(x + r): their gradients add up
      loss, grads, embedding_gradient = self.adversarial.clean(features, loss_of)
      _, adversarial_grads = self.adversarial.gradients(features, loss_of, embedding_gradient)
      dense = lambda g: tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
      grads = [None if g is None else dense(g) + dense(a)
               for g, a in zip(grads, adversarial_grads)]
      return loss, grads
    with tf.GradientTape() as tape:
      loss = loss_of(task.training_logits(model, batch, training=True))
    # The embedding's gradient is IndexedSlices whose size follows the batch's length; its
    # all-reduce is a gather that fails when replicas hold batches of different lengths
    # (length bucketing). Dense, it is a fixed-shape sum; the optimizer densifies it anyway.
    # Variables the loss does not reach (the pooler, under tagging or pooling=cls/mean) get
    # None and are left alone.
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
             for g in tape.gradient(loss, model.trainable_variables)]
    return loss, grads

  def _loss_denominator(self, micro_batches):
    """What the optimizer step's summed per-example losses are divided by: its global batch
    size, or, when the task counts loss terms (token-averaged tagging), the count summed
    over this step's micro-batches and every replica."""
    counts = [self.task.loss_counts(batch["label"]) for batch in micro_batches]
    if counts[0] is None:
      return tf.constant(float(self.global_batch_size))
    total = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.add_n([tf.reduce_sum(c) for c in counts]))
    return tf.maximum(total, 1.0)

  def _losses_of(self, features, labels, training):
    return self.task.training_losses(labels, self.model(features, training=training))

  def _private_step(self, micro_batches):
    """DP-SGD (training/dp_sgd.py): each micro-batch's per-example clipped gradient sums,
    one all-reduce, the same noise on every replica, then apply (no max_grad_norm: the
    per-example clip bounds the step)."""
    variables = self.private_variables
    loss, sums = self.dp_sgd.clipped_sum(self.model, variables, self._losses_of,
                                         micro_batches[0])
    for batch in micro_batches[1:]:
      with tf.control_dependencies(sums):
        batch = tf.nest.map_structure(tf.identity, batch)
      more_loss, more_sums = self.dp_sgd.clipped_sum(self.model, variables, self._losses_of,
                                                     batch)
      loss, sums = loss + more_loss, [a + b for a, b in zip(sums, more_sums)]
    context = tf.distribute.get_replica_context()
    sums = context.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    grads = self.dp_sgd.noised_mean(sums, self.optimizer.iterations)
    norm = tf.linalg.global_norm(grads)
    loss = loss / self.privacy_plan.batch_size
    finite = tf.math.is_finite(context.all_reduce(tf.distribute.ReduceOp.SUM, loss)) & \
        tf.math.is_finite(norm)
    self.optimizer.update_condition = finite
    self.optimizer.apply(grads, variables)
    return loss, norm, 1 - tf.cast(finite, tf.int32)

  def replica_step(self, *micro_batches):
    """One optimizer step on one replica's micro-batches (train.grad_accum_steps of them):
    forward and backward on each in turn, gradients summed, then one all-reduce, clip and
    apply. Returns the replica's share of the loss and the global gradient norm."""
    if self.dp_sgd is not None:
      return self._private_step(micro_batches)
    max_norm = self.config.train.max_grad_norm
    denominator = self._loss_denominator(micro_batches)
    loss, grads = self._gradients(micro_batches[0], denominator)
    for batch in micro_batches[1:]:
      # One micro-batch after the other: its forward pass waits for the previous gradients,
      # so only one micro-batch's activations are alive at a time.
      with tf.control_dependencies([g for g in grads if g is not None]):
        batch = tf.nest.map_structure(tf.identity, batch)
      more_loss, more_grads = self._gradients(batch, denominator)
      loss += more_loss
      grads = [g if m is None else m if g is None else g + m for g, m in zip(grads, more_grads)]
    pairs = [(g, v) for g, v in zip(grads, self.model.trainable_variables) if g is not None]
    variables = [v for _, v in pairs]
    context = tf.distribute.get_replica_context()
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
    norm = tf.linalg.global_norm(grads)
    if max_norm > 0:
      grads, _ = tf.clip_by_global_norm(grads, max_norm, use_norm=norm)
    # The divergence guard, on the device: the step's summed loss and the global gradient
    # norm, the same on every replica; a non-finite step leaves the weights as they were.
    finite = tf.math.is_finite(context.all_reduce(tf.distribute.ReduceOp.SUM, loss)) & \
        tf.math.is_finite(norm)
    self.optimizer.update_condition = finite
    self.optimizer.apply(grads, variables)
    return loss, norm, 1 - tf.cast(finite, tf.int32)

  def _build_train_step(self):
    # No tensor-dependent Python control flow in the step (its loops are tf.while_loop or
    # over Python values): autograph's conversion of it would only cost seconds per process.
    def replica_step_and_fill(*micro_batches):
      return (*self.replica_step(*micro_batches),
              tf.add_n([packing.fill_counts(b) for b in micro_batches]))

    @tf.function(autograph=False)
    def train_step(iterator):
      micro_batches = tuple(next(iterator) for _ in range(self.accum_steps))
      # Unpacked runs (static shapes, TPU) count nothing and add no reduction to the step.
      loss, norm, not_applied, *fill = self.strategy.run(
          replica_step_and_fill if self.packing else self.replica_step, args=micro_batches)
      return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
              self.strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None),
              self.strategy.reduce(tf.distribute.ReduceOp.SUM, not_applied, axis=None),
              self.strategy.reduce(tf.distribute.ReduceOp.SUM, fill[0], axis=None) if fill
              else tf.zeros([5]))
    return train_step

  def _log_packing(self, first_step, step, fill):
    """How full the packed rows of steps first_step..step were (`fill`: the sum of their
    packing.fill_counts over micro-batches and replicas), against padding each micro-batch
    to its longest example."""
    rows, slots, tokens, examples, unpacked_slots = fill
    steps = step - first_step + 1
    logging.info("Packing: on (data.packing), steps %d-%d: %.1f examples in %.1f rows of up "
                 "to %d per step (%.1f examples per row); padding %.1f%% of the tokens (padded "
                 "per batch without packing: %.1f%%)", first_step, step, examples / steps,
                 rows / steps, self.config.data.max_seq_length, examples / rows,
                 100 * (1 - tokens / slots), 100 * (1 - tokens / unpacked_slots))

  def _mix_in_start_weights(self):
    """task.wise_ft_alpha < 1 (WiSE-FT's weight-space ensemble, Wortsman et al. 2022,
    arXiv 2109.01903): sets each trainable weight to start + alpha * (trained - start) for
    the evaluation, the best checkpoint and so the export; returns the trained weights, which
    training goes on from (None when the task does not mix). After the last evaluation the
    mixed weights stay, so the last checkpoint and the head fitted on them agree."""
    if self._start_weights is None:
      return None
    alpha = self.config.task.wise_ft_alpha
    trained = [v.numpy() for v in self.model.trainable_variables]
    self._assign_weights([start + alpha * (now - start)
                          for start, now in zip(self._start_weights, trained)])
    return trained

  def _assign_weights(self, values):
    for variable, value in zip(self.model.trainable_variables, values):
      variable.assign(value)

  def _fit_head(self):
    train_outputs = lambda model: experiment.evaluate_split(
        self.task, model, self.splits["train"], label_values=self.train_label_values,
        batch_size=self.config.train.eval_batch_size)[1]
    self.task.fit_head(self.model, self.train_label_values, train_outputs)

  def evaluate_dev(self):
    self._fit_head()
    # Under multi_worker each worker evaluates the whole dev set with its own copy.
    on_replicas = self.static_shapes and not isinstance(
        self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
    _, logits = experiment.evaluate_split(
        self.task, self.model, self.splits["dev"], label_values=self.dev_label_values,
        batch_size=self.config.train.eval_batch_size, static_shapes=self.static_shapes,
        strategy=self.strategy if on_replicas else None)
    # The report pass after training reuses them when this state is the best (best_run);
    # the replicas' forward pass may differ from a plain one in the last bits.
    self._dev_logits = (self.step, None if on_replicas else logits)
    calibration = self.task.calibrate(self.dev_label_values, logits)
    return self.task.report(self.dev_label_values, logits, calibration)

  def best_run(self):
    """For the report pass after train(): the best checkpoint as an experiment.Run on this
    trainer's model, so that it is not built and traced again, and {"dev": (label values,
    logits)} when this process last evaluated that very state. (None, {}) where the report
    must build its own model: a precision other than float32 (reports and exports are
    float32) or a TPU or multi-worker strategy, whose variables a plain call does not read."""
    if self.best is None or self.precision != "float32" or isinstance(
        self.strategy, (tf.distribute.TPUStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
      return None, {}
    evaluated_step, logits = self._dev_logits
    if logits is not None and evaluated_step == self.step == self.best["step"]:
      path, step = str(self.workdir.best / self.best["checkpoint"]), self.best["step"]
      known = {"dev": (self.dev_label_values, logits)}
    else:
      path, step = experiment.restore_model(self.workdir, self.model, "best")
      known = {}
    return experiment.Run(self.workdir, self.config, self.labels, self.encoder, self.task,
                          self.model, path, step), known

  def _maybe_update_best(self, report, step):
    metric = self.task.best_metric
    value = report[metric]
    if not math.isfinite(value):
      logging.warning("step %d: dev %s is %s; this checkpoint cannot become the best", step,
                      metric, value)
    if math.isfinite(value) and (self.best is None or
                                 self.task.is_better(value, self.best["value"])):
      self.best = {"step": step, "metric": metric, "value": value,
                   "checkpoint": f"ckpt-{step}", "evaluations_without_improvement": 0}
      self._save_best_state()
      path = self._save_checkpoint(self.best_manager, step)
      self.best["checkpoint"] = path.rsplit("/", 1)[1]
      logging.info("New best dev %s %.4f at step %d", metric, value, step)
    elif self.best is not None:
      self.best["evaluations_without_improvement"] = \
          self.best.get("evaluations_without_improvement", 0) + 1
      self._save_best_state()
    self._write_best()

  def _write_best(self):
    if self.is_chief and self.best is not None:
      atomic.write_text(self.workdir.best_json, json.dumps(self.best, indent=1) + "\n")

  def _stops_early(self, step):
    """train.early_stopping_patience: True (and says why) when dev has not improved for
    that many evaluations in a row; best.json records it, so a rerun does not go on."""
    patience = self.config.train.early_stopping_patience
    if not patience or self.best is None or \
        self.best["evaluations_without_improvement"] < patience:
      return False
    self.best["stopped_early_at_step"] = step
    self._save_best_state()
    self._write_best()
    logging.warning("Early stopping at step %d of %d: dev %s has not improved for %d "
                    "evaluations (train.early_stopping_patience=%d); best %.4f at step %d",
                    step, self.total_steps, self.best["metric"], patience, patience,
                    self.best["value"], self.best["step"])
    return True

  def _evaluate(self, step):
    start = time.time()
    report = self.evaluate_dev()
    metrics = {k: report[k] for k in self.task.metric_names}
    logging.info("step %d | %s | %.1fs", step,
                 " | ".join(f"dev {k} {v:.4f}" for k, v in metrics.items()), time.time() - start)
    self.writers.eval_scalars(step, metrics)
    if self.dp_sgd is not None:
      spent = self.privacy_plan.report(step)
      logging.info("step %d | privacy: epsilon %.3f at delta %.3g", step, spent["epsilon"],
                   spent["delta"])
      self.writers.train_scalars(step, {"privacy/epsilon": spent["epsilon"]})
    if "confusion_matrix" in report:
      self.writers.eval_image(step, "confusion_matrix", plots.confusion_matrix_png(
          report["confusion_matrix"], self.labels.labels, f"dev (step {step})"))
    self._maybe_update_best(report, step)
    return report

  def train(self, until_step=None):
    """Trains to train.steps (or `until_step`, for tests that interrupt a run)."""
    self._write_run_files()
    if not self.task.trains:
      self._keep_as_built()
      return
    stop = min(self.total_steps, until_step or self.total_steps)
    start_step = self.step
    if self._finished():
      logging.info("%s: training already finished at step %d%s", self.workdir.root, start_step,
                   " (stopped early)" if start_step < self.total_steps else "")
      if self.is_chief and not summaries.session_ended(self.workdir.tensorboard):
        self._end_session("success")  # killed after its last checkpoint, before this
      self._close()
      return
    trainable, total = peft.parameter_counts(self.model)
    logging.info("%s: %d train examples%s, global batch %d, %d steps (%.2f epochs), %d "
                 "replicas, %s trainable of %s parameters (peft.method=%s), %s%s%s%s",
                 "resuming" if start_step else "starting", len(self.splits["train"]),
                 f" ({self.num_train_examples} windows)" if self.task.windowed else "",
                 self.global_batch_size, self.total_steps,
                 self.total_steps / self.steps_per_epoch, self.strategy.num_replicas_in_sync,
                 f"{trainable:,}", f"{total:,}", self.config.peft.method, self.precision,
                 ", static shapes" if self.static_shapes else "",
                 ", examples packed into rows (data.packing)" if self.packing else "",
                 f", {self.accum_steps} accumulated micro-batches of {self.micro_batch_size}"
                 if self.accum_steps > 1 else "")
    if not self.is_chief:
      logging.info("This worker is not the chief: its checkpoints and summaries go to %s and "
                   "are deleted at the end; the chief writes %s", self._scratch, self.workdir.root)
    if not self.resumed_from:
      self.writers.start_session(self.config, self.task.metric_names, self.task.best_metric)
      if self.config.train.divergence_rollbacks:
        self._save_training_checkpoint(0)  # what a divergence before ckpt-N goes back to
    iterator = iter(self.strategy.distribute_datasets_from_function(self._dataset_fn))
    train_step = self._build_train_step()
    window = _LogWindow(self.run_state)
    window_start, timed_in_window, packing_logged = time.time(), 0, False
    run_start, steps_timed = time.time(), 0
    step = start_step
    pending = []  # (step, loss, norm, not applied, packing fill) of steps not read yet
    signals = _SignalCatcher(self.strategy)
    preemption = self._preemption_handler(lambda: step)
    try:
      while step < stop:
        outputs = train_step(iterator)
        step += 1
        # Steps' outputs are read (a wait for the device) only where the loop acts on them:
        # at log, evaluation and checkpoint steps, on a signal, and every step under
        # multi_worker (whose preemption save may come at any step). Read in order, a
        # non-finite step is still handled before anything is saved after it.
        pending.append((step, *outputs))
        log_step = step % self.config.train.log_every == 0 or step == stop
        evaluate = step % self.eval_every == 0 or step == self.total_steps
        save = step % self.checkpoint_every == 0 or step == stop
        if not (log_step or evaluate or save or signals.received or preemption is not None):
          continue
        diverged_at = None
        for pending_step, loss, norm, not_applied, fill in pending:
          finite = not int(not_applied)
          window.add(float(loss) if finite else None, fill.numpy())
          timed_in_window += 1  # a step not applied took its time too
          if not finite and self._nonfinite_step(pending_step, float(loss), float(norm)):
            diverged_at = pending_step
            break
          if finite and self._loss_rose(window, pending_step):
            diverged_at = pending_step
            break
        pending.clear()
        if diverged_at is not None:
          step = self._roll_back(diverged_at)
          window.load()  # the checkpoint's
          iterator = iter(self.strategy.distribute_datasets_from_function(self._dataset_fn))
          window_start, timed_in_window = time.time(), 0
          continue
        if window.steps and log_step:
          mean_loss, window_fill, fill_steps = window.take()
          elapsed = time.time() - window_start
          steps_per_sec = timed_in_window / elapsed
          steps_timed += timed_in_window
          eta = (self.total_steps - step) / max(steps_timed / (time.time() - run_start), 1e-9)
          lr = float(self.optimizer.learning_rate)
          logging.info("step %d/%d | loss %.4f | lr %.2e | grad norm %.3f | %.2f steps/s | "
                       "%.1f examples/s | ETA %s", step, self.total_steps, mean_loss, lr,
                       float(norm), steps_per_sec, steps_per_sec * self.global_batch_size,
                       progress.format_duration(eta))
          scalars = {
              "loss": mean_loss, "learning_rate": lr, "grad_norm": float(norm),
              "steps_per_sec": steps_per_sec,
              "examples_per_sec": steps_per_sec * self.global_batch_size}
          left_out = int(self.run_state["batches_left_out"].numpy())
          if left_out:
            scalars["batches_left_out"] = left_out
            scalars["divergence_rollbacks"] = int(
                self.run_state["divergence_rollbacks"].numpy())
          if self.packing:
            if not packing_logged:
              self._log_packing(step - fill_steps + 1, step, window_fill)
              packing_logged = True
            scalars["padding_percent"] = 100 * (1 - window_fill[2] / window_fill[1])
          self.writers.train_scalars(step, scalars)
          window_start, timed_in_window = time.time(), 0
        window.keep()  # before any save below
        stopping = False
        if evaluate:
          trained = self._mix_in_start_weights()
          self._evaluate(step)
          self._head_step = step
          stopping = self._stops_early(step)
          if trained is not None and step < self.total_steps and not stopping:
            self._assign_weights(trained)  # training goes on from its own weights
            self._head_step = None
        if save or stopping:
          self._save_training_checkpoint(step)
          # The speed leaves the save out: the steps before it are counted in the ETA now.
          steps_timed, timed_in_window = steps_timed + timed_in_window, 0
          window_start = time.time()
        if stopping:
          break
        if signals.received and step < stop:
          path = self._save_training_checkpoint(step)
          raise Preempted(signals.received, step, path)
        if preemption is not None and step < stop:
          preemption.save_checkpoint_if_preempted(checkpoint_number=step)
      if step >= self.total_steps or stopping:
        self._end_session("success")
    except TrainingError:
      self._end_session("failure")
      raise
    except CLUSTER_FAILURES as e:
      if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise
      self._end_session("failure")
      raise TrainingError(self._lost_worker(step, e)) from None
    finally:
      signals.restore()
      self._close()

  def _lost_worker(self, step, error):
    """The line for a multi_worker step that failed because another worker is gone: which
    one, as TensorFlow's message names it, and the checkpoint every worker resumes from."""
    message = error.message or ""
    resolver = self.strategy.cluster_resolver
    me = (resolver.task_type, str(resolver.task_id))
    peers = [task for task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", message)
             if task != me]
    who = " ".join(peers[0]) if peers else "another worker"
    cause = re.search(r"^(Collective ops is aborted by: .*|.*heartbeat timeout.*|"
                      r"The following tasks are unhealthy.*)$", message, re.M)
    first_line = message.strip().split("\n", 1)[0]
    cause = (cause.group(1) if cause else first_line or "no message").strip()[:200]
    latest = self.manager.latest_checkpoint
    if latest and self.is_chief:
      restart = (f"the last checkpoint is {latest}; start every worker again with the same "
                 "command: they resume from it")
    elif latest:  # the chief's own save of that step may not have ended
      restart = (f"the last checkpoint saved together is {pathlib.Path(latest).name}; start "
                 "every worker again with the same command: they resume from the newest "
                 f"intact one in {self.workdir.checkpoints}")
    else:
      restart = "no checkpoint was saved yet; start every worker again with the same command"
    return (f"{resolver.task_type} {resolver.task_id} lost {who} of the cluster after step "
            f"{step} ({type(error).__name__}: {cause}): that worker stopped (killed, crashed, "
            f"or its machine or network went down). Nothing was saved after it: {restart}")

  def _save_training_checkpoint(self, step):
    """Saves the training checkpoint of `step`; for a task that fits a head to the encoder
    (setfit), fitted first to the weights at hand unless they are those it was fitted on at
    this step's evaluation, so that every checkpoint holds a head and an encoder that belong
    together (evaluate and export read any checkpoint; the head trains nothing, so training
    from the checkpoint is unchanged). TensorFlow's preemption handler (multi_worker) saves
    through it too."""
    if self.task.fits_head and self._head_step != step:
      self._fit_head()
      self._head_step = step
    return self._save_checkpoint(self.manager, step)

  def _save_checkpoint(self, manager, step):
    """manager.save, where a full, over-quota or read-only disk stops the run in one line
    naming the checkpoint to resume from (the unfinished ckpt-N_temp is removed at the
    next start)."""
    try:
      return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
      failure = storage_failure(e)
      if failure is None:
        raise
      reason = failure[1]
      latest = self.manager.latest_checkpoint
      advice = STORAGE_FAILURES[reason].capitalize()
      raise WorkdirError(
          f"{manager.directory}: could not save the checkpoint of step {step} ({reason}); "
          f"the last complete one is {latest or 'none yet'}. {advice} and run the same "
          "command: it resumes from there") from None

  def _keep_as_built(self):
    """A task that learns nothing (zero_shot): the model as built is checkpoint 0, evaluated
    on dev and kept as the best; a rerun finds it and does nothing."""
    try:
      if self.best is None:
        logging.info("%s: task.name=%s trains nothing; the model as built is step 0's "
                     "checkpoint", self.workdir.root, self.config.task.name)
        self.writers.start_session(self.config, self.task.metric_names, self.task.best_metric)
        self._evaluate(0)
        self._save_checkpoint(self.manager, 0)  # after: its run state names the best
        self._end_session("success")
      else:
        logging.info("%s: already built and evaluated", self.workdir.root)
    finally:
      self._close()

  def _preemption_handler(self, current_step):
    """Under multi_worker, TensorFlow's PreemptionCheckpointHandler: a SIGTERM to any
    worker makes every worker save at the same step (the save is collective), then each
    stops with Preempted. Other strategies use _SignalCatcher."""
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return None

    def stop():
      step = current_step()
      raise Preempted(signal.SIGTERM, step, self.workdir.checkpoints / f"ckpt-{step}")

    def save(checkpoint_number):  # as every other save: a SetFit head is refitted first
      self._save_training_checkpoint(checkpoint_number)

    if not isinstance(threading.excepthook, _QuietPreemptionWatchers):
      threading.excepthook = _QuietPreemptionWatchers(threading.excepthook)
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        self.strategy.cluster_resolver, self.manager,
        termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=stop,
                                                                        save_fn=save))

  def _nonfinite_step(self, step, loss, norm):
    """A step whose loss or gradient norm was not finite: it was not applied (the weights
    and optimizer moments are as before it). Skips it while train.skip_nonfinite_steps
    allows; else True while train.divergence_rollbacks allows a rollback (_roll_back), else
    stops the run."""
    t = self.config.train
    self.run_state["nonfinite_steps"].assign_add(1)
    count = int(self.run_state["nonfinite_steps"].numpy())
    self.writers.train_scalars(step, {"nonfinite_steps": count})
    what = f"loss {loss} and gradient norm {norm}; {self._examples_of(step)}"
    if count <= t.skip_nonfinite_steps:
      logging.warning("step %d: %s; the step was skipped (%d of train.skip_nonfinite_steps=%d)",
                      step, what, count, t.skip_nonfinite_steps)
      return False
    return self._diverged(step, what, applied=False)

  def _loss_rose(self, window, step):
    """After `window` took an applied step's loss: True when the moving average has risen past
    train.divergence_loss_ratio times the first step's loss and a rollback is allowed (else
    _diverged stops the run)."""
    ratio = self.config.train.divergence_loss_ratio
    average, first = window.loss_average, window.first_loss
    if not ratio or not average > ratio * first:
      return False
    return self._diverged(
        step, f"its loss {window.last_loss:.4g} brought the training loss's moving average to "
        f"{average:.4g}, {average / first:.0f} times the loss of the run's first step, "
        f"{first:.4g} (train.divergence_loss_ratio={ratio})", applied=True)

  def _diverged(self, step, what, applied):
    """True while train.divergence_rollbacks allows a rollback (_roll_back), else stops the
    run; `what` says how step `step` diverged."""
    t = self.config.train
    rollbacks = int(self.run_state["divergence_rollbacks"].numpy())
    if rollbacks < t.divergence_rollbacks:
      logging.warning("step %d: %s", step, what)
      return True
    latest = self.manager.latest_checkpoint
    if t.divergence_rollbacks:
      advice = ("It had already gone back to a checkpoint as often as "
                f"train.divergence_rollbacks={t.divergence_rollbacks} allows. Lower "
                "train.learning_rate or keep train.max_grad_norm > 0 (in a new --workdir), or "
                "rerun the same command with a larger train.divergence_rollbacks")
    else:
      advice = ("Lower train.learning_rate or keep train.max_grad_norm > 0 (in a new "
                "--workdir), or rerun the same command with "
                "--config.train.divergence_rollbacks=2: it resumes from the last checkpoint "
                "and, should it diverge again, goes back to it and leaves out the batches it "
                "trained on since")
    if applied:
      advice += ("; a loss that rises this far in a healthy run (a few examples far harder "
                 "than the rest) may be let through: rerun the same command with "
                 "--config.train.divergence_loss_ratio=0")
    raise TrainingError(
        f"training diverged at step {step}: {what}. "
        f"{'Nothing' if applied else 'The step was not applied and nothing'} was "
        f"saved after it: the last checkpoint is {latest or 'none'}"
        f"{', the best ' + self.best['checkpoint'] if self.best else ''}. {advice}")

  def _roll_back(self, diverged_step):
    """train.divergence_rollbacks: restores the newest intact training checkpoint and moves
    the data stream past the batches of the steps from it to `diverged_step`; returns the
    step restored. The two counts are set after the restore (which brings back the
    checkpoint's), so the next checkpoint holds them; a run killed before that resumes from
    the same checkpoint, diverges at the same step and goes back the same way. The
    TensorBoard events of the undone steps are removed, as at a resume.

    Hand-written: no library on this stack rolls a training loop back (PaLM's training,
    Chowdhery et al. 2022, did it by hand at loss spikes: restart about 100 steps before the
    spike and skip some 200-500 batches)."""
    state = self.run_state
    rollbacks = int(state["divergence_rollbacks"].numpy()) + 1
    left_out = int(state["batches_left_out"].numpy())
    path = resume.restore_newest_intact(self.workdir, self._restore, repair=self.is_chief)
    if path is None:
      raise TrainingError(f"training diverged at step {diverged_step}, and "
                          f"{self.workdir.checkpoints} holds no checkpoint to go back to")
    step = self.step
    left_out += diverged_step - step
    state["divergence_rollbacks"].assign(rollbacks)
    state["batches_left_out"].assign(left_out)
    if pathlib.Path(path).name != pathlib.Path(self.manager.latest_checkpoint or "").name:
      self.manager = self._new_manager()  # newer ones were damaged and set aside
    self.best = self._load_best()
    self._write_best()
    self._dev_logits = (None, None)
    self._head_step = None
    if self.is_chief:  # the files are rewritten: the writers' files are closed first
      self.writers.close()
      summaries.drop_events_after(
          self.workdir.tensorboard, step,
          why=f"after {pathlib.Path(path).name}, the checkpoint this run went back to")
      self.writers = summaries.Writers(self.workdir.tensorboard)
    undone = f"step {diverged_step}" if diverged_step == step + 1 else \
        f"steps {step + 1}-{diverged_step}"
    logging.warning(
        "Went back to %s (step %d) and left out the data of %s, the batches it had trained on "
        "since (rollback %d of train.divergence_rollbacks=%d; %d batches left out in all)",
        path, step, undone, rollbacks, self.config.train.divergence_rollbacks, left_out)
    return step

  def _end_session(self, status):
    if self.is_chief:
      best = {"step": self.best["step"], self.best["metric"]: self.best["value"]} \
          if self.best else {}
      self.writers.end_session(best, status)

  def close(self):
    """Flushes the summaries and releases the run directory (train() does this itself)."""
    self._close()

  def _close(self):
    self.writers.flush()
    if not self.is_chief:
      self.writers.close()
      shutil.rmtree(self._scratch, ignore_errors=True)
    self._release()

  def _release(self):
    if self.lock is not None:
      self.lock.release()
      self.lock = None


class _LogWindow:
  """What the next logged step averages: the losses of the applied steps and the packing
  fill of every step read since the last logged step; and, for train.divergence_loss_ratio,
  the loss of the run's first applied step and the exponential moving average of the losses
  since. Summed here, on the host, and put in the run state (kept in the training
  checkpoint) only before a save may come, so a run resumed between two logged steps logs
  what an uninterrupted run logs, and meets a divergence at the step it meets it.
  The moving average is hand-written: Keras's TerminateOnNaN sees only non-finite losses,
  and Lightning's EarlyStopping(divergence_threshold) takes an absolute loss the user must
  know in advance."""

  def __init__(self, run_state):
    self._state = run_state
    self.last_loss = None
    self.load()

  def load(self):
    """As of the restored checkpoint (empty at a start; the first loss and the average NaN
    there, or from a checkpoint made before they were kept: the next step's loss is then
    the first)."""
    state = self._state
    self.loss = float(state["window_loss"].numpy())
    self.steps = int(state["window_steps"].numpy())
    self.fill = state["window_fill"].numpy()
    self.fill_steps = int(state["window_fill_steps"].numpy())
    self.first_loss = float(state["first_loss"].numpy())
    self.loss_average = float(state["loss_average"].numpy())

  def add(self, loss, fill):
    """A step read: its packing fill, and its loss unless it was not applied (None)."""
    self.fill, self.fill_steps = self.fill + fill, self.fill_steps + 1
    if loss is None:
      return
    self.loss, self.steps, self.last_loss = self.loss + loss, self.steps + 1, loss
    if not self.first_loss > 0:  # a first loss of 0 (nothing to learn in its batch) is no scale
      self.first_loss = self.loss_average = loss
    else:
      self.loss_average = LOSS_AVERAGE_DECAY * self.loss_average + (
          1 - LOSS_AVERAGE_DECAY) * loss

  def take(self):
    """(mean loss, packing fill, steps read) since the last logged step; empties it."""
    taken = (self.loss / self.steps, self.fill, self.fill_steps)
    self.loss, self.steps, self.fill, self.fill_steps = 0.0, 0, np.zeros(5), 0
    return taken

  def keep(self):
    state = self._state
    state["window_loss"].assign(self.loss)
    state["window_steps"].assign(self.steps)
    state["window_fill"].assign(self.fill)
    state["window_fill_steps"].assign(self.fill_steps)
    state["first_loss"].assign(self.first_loss)
    state["loss_average"].assign(self.loss_average)


class _QuietPreemptionWatchers:
  """threading.excepthook: the watcher threads of TensorFlow's PreemptionCheckpointHandler
  end with a traceback when the worker that holds the coordination service is gone; that
  is one warning here (the training step itself then stops in one line, _lost_worker).
  Every other thread's exception goes to the hook before."""
  THREADS = ("PeerTerminationWatcher-", "WorkerTerminationSignalWatcher-")

  def __init__(self, previous):
    self._previous = previous

  def __call__(self, args):
    if (args.thread is not None and args.thread.name.startswith(self.THREADS)
        and isinstance(args.exc_value, tf.errors.OpError)):
      logging.warning("TensorFlow's %s thread stopped: %s: %s", args.thread.name,
                      type(args.exc_value).__name__,
                      (args.exc_value.message or "").strip().split("\n")[0][:200])
      return
    self._previous(args)


class _SignalCatcher:
  """SIGTERM (docker stop, Kubernetes, Slurm, preemptible VMs) and SIGINT (Ctrl-C) during
  training: noted, and the loop saves a checkpoint at the next step boundary and stops.

  Written here because tf.distribute.experimental.PreemptionCheckpointHandler supports
  only MultiWorkerMirroredStrategy and TPUStrategy; under multi_worker the trainer uses it
  instead (Trainer._preemption_handler).
  """

  def __init__(self, strategy):
    self.received = None
    self._previous = {}
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or \
        threading.current_thread() is not threading.main_thread():
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._note)

  def _note(self, signum, frame):
    del frame
    if self.received is not None:  # a second Ctrl-C: stop now, as before
      self.restore()
      raise KeyboardInterrupt
    self.received = signum
    logging.warning("%s received: saving a checkpoint after this step, then stopping",
                    signal.Signals(signum).name)

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
