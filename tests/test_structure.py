"""The package's import graph is one-way (README "How it fits together"): entry points ->
{training, evaluation, export} -> experiment (run and model assembly) -> {tasks} -> {config,
checkpoints, text_encoder, peft, data} -> utilities (families among them). Imports inside functions count too."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tf_finetune"

# Lower layers never import higher ones; modules of one layer may import each other only
# within their own package (a sub-package is one unit).
LAYERS = [
    {"tf_finetune.errors"},
    {"tf_finetune.atomic", "tf_finetune.plots", "tf_finetune.workdir_lock", "tf_finetune.progress",
     "tf_finetune.families", "tf_finetune.checkpoint_dirs", "tf_finetune.rendezvous"},
    {"tf_finetune.config"},
    {"tf_finetune.checkpoints", "tf_finetune.text_encoder", "tf_finetune.peft",
     "tf_finetune.distribute", "tf_finetune.data", "tf_finetune.privacy"},
    {"tf_finetune.embedding_hook"},
    {"tf_finetune.tasks"},
    {"tf_finetune.experiment"},
    {"tf_finetune.training", "tf_finetune.evaluation", "tf_finetune.export"},
    {"tf_finetune", "tf_finetune.cli", "tf_finetune.train", "tf_finetune.evaluate",
     "tf_finetune.predict", "tf_finetune.explain", "tf_finetune.export.__main__"},
]
ENTRY_POINTS = LAYERS[-1]


def _module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
  """Every tf_finetune module this file imports, at any depth of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("tf_finetune")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tf_finetune"):
      for alias in node.names:  # `from tf_finetune import peft` imports tf_finetune.peft
        candidate = f"{node.module}.{alias.name}"
        is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or \
            (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
        found.add(candidate if is_module else node.module)
  return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module):
  """The layer entry a module belongs to: itself, or its sub-package."""
  if module in ENTRY_POINTS:
    return module
  for layer in LAYERS:
    for unit in sorted(layer, key=len, reverse=True):
      if module == unit or module.startswith(unit + "."):
        return unit
  raise AssertionError(f"{module} is in no layer of tests/test_structure.py")


def _layer(module):
  unit = _unit(module)
  return next(i for i, layer in enumerate(LAYERS) if unit in layer)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_later_stage(module):
  for imported in GRAPH[module] - {"tf_finetune"}:
    if _unit(imported) == _unit(module):
      continue
    assert _layer(imported) < _layer(module) or module in ENTRY_POINTS, \
        f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})"


def test_tasks_import_only_data_config_families_and_errors():
  """A task builds its head on whatever backbone it is given; families.py says how each
  family's backbone is called and pooled, nothing about loading checkpoints."""
  allowed = ("tf_finetune.tasks", "tf_finetune.data", "tf_finetune.errors", "tf_finetune.config",
             "tf_finetune.families")
  for module, imported in GRAPH.items():
    if module.startswith("tf_finetune.tasks"):
      assert all(i.startswith(allowed) for i in imported), (module, imported)


def test_only_training_and_the_entry_points_import_training():
  for module, imported in GRAPH.items():
    if any(i.startswith("tf_finetune.training") for i in imported):
      assert module.startswith("tf_finetune.training") or module in ENTRY_POINTS, module


def test_no_import_cycles():
  state = {}

  def visit(module, path):
    state[module] = "open"
    for imported in sorted(GRAPH.get(module, ())):
      if imported == module or imported == "tf_finetune":
        continue
      assert state.get(imported) != "open", " -> ".join(path + [imported])
      if imported not in state:
        visit(imported, path + [imported])
    state[module] = "done"
  for module in GRAPH:
    if module not in state:
      visit(module, [module])
