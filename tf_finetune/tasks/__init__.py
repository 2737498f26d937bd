"""Tasks by config name (task.name)."""
from tf_finetune.tasks.classification import ClassificationTask
from tf_finetune.tasks.multilabel import MultiLabelTask
from tf_finetune.tasks.regression import RegressionTask
from tf_finetune.tasks.setfit import SetFitTask
from tf_finetune.tasks.tagging import TaggingTask
from tf_finetune.tasks.zero_shot import ZeroShotTask

TASKS = {"classification": ClassificationTask, "multilabel": MultiLabelTask,
         "regression": RegressionTask, "tagging": TaggingTask, "zero_shot": ZeroShotTask,
         "setfit": SetFitTask}


def get_task(config, label_vocabulary, encoder):
  return TASKS[config.task.name](config, label_vocabulary, encoder)


def build_vocabulary(config, train):
  return TASKS[config.task.name].build_vocabulary(config, train)
