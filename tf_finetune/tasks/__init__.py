"""Tasks by config name."""
from tf_finetune.tasks.classification import ClassificationTask

TASKS = {"classification": ClassificationTask}


def get_task(config, label_vocabulary):
  return TASKS[config.task.name](config, label_vocabulary)
