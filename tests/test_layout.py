"""The package layout: no import cycle, every module importable on its own, old import paths kept."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1] / "litvit"


def _modules():
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _module_level_imports(name: str, path: Path, modules) -> set:
    """litvit modules that ``name`` imports when it is imported (module-level statements only, not
    those inside functions; ``if TYPE_CHECKING`` blocks are skipped)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []) +
                      [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "litvit")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "litvit":
                    continue
                for a in node.names:  # ``from . import sub`` imports a submodule
                    sub = f"{target}.{a.name}"
                    found.add(sub if sub in modules else target)

    visit(ast.parse(path.read_text()).body)
    found.discard(name)
    return {m for m in found if m in modules}


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _module_level_imports(name, path, modules) for name, path in modules.items()}
    state, stack, cycles = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# The floors, lowest first: a module imports only from its own package or from lower floors. The
# package root and the old-path modules are facades over everything. The old names of what moved to
# litvit.cli resolve through ``utils.moved_names`` at run time, not by a module-level import.
FLOORS = [
    ("litvit.errors", "litvit.utils"),
    ("litvit.recipes", "litvit.metrics", "litvit.checkpoint"),
    ("litvit.ops",),
    ("litvit.models", "litvit.data", "litvit.engine"),
    ("litvit.tasks", "litvit.tools"),
    ("litvit.cli",),
    ("litvit", "litvit.__main__", "litvit.detection", "litvit.segmentation", "litvit.dense_data"),
]


def _package(name: str) -> str:
    for packages in FLOORS[::-1]:
        for p in sorted(packages, key=len, reverse=True):
            if name == p or (p != "litvit" and name.startswith(p + ".")):
                return p
    return "litvit"


def test_floors_import_only_downwards():
    modules = _modules()
    floor = {p: i for i, packages in enumerate(FLOORS) for p in packages}
    wrong = []
    for name, path in modules.items():
        src = _package(name)
        for target in _module_level_imports(name, path, modules):
            dst = _package(target)
            if dst == src:
                continue
            if floor[dst] >= floor[src]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that do not go down a floor: " + ", ".join(sorted(wrong))


def test_library_floors_have_no_command_line():
    """Argument parsing lives in litvit.cli: tasks, tools, engine, models, data and ops take plain
    arguments (checkpoint.py names ``argparse.Namespace`` inside a function only, to unpickle the
    official trainers' saved arguments)."""
    found = []
    for name, path in _modules().items():
        if _package(name) in ("litvit.cli", "litvit.__main__"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                if target.startswith("litvit.cli") or (node.level and (node.module or "").split(".")[0] == "cli"):
                    found.append(f"{name}: from {target} import ...")
            elif isinstance(node, ast.Import) and any(a.name.startswith("litvit.cli") for a in node.names):
                found.append(f"{name}: import litvit.cli")
        for node in tree.body:  # module level
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                found.append(f"{name}: import argparse")
    assert not found, f"command-line imports below the command line: {found}"


def test_moved_command_line_names_resolve_lazily():
    """The tasks' old names of the command-line functions reach litvit.cli on first use; a misspelt
    name is still an AttributeError."""
    import litvit.cli.classification as cli_cls
    import litvit.tasks.classification as cls
    assert cls.run_training is cli_cls.run_training and cls.add_parsers is cli_cls.add_parsers
    with pytest.raises(AttributeError, match="no attribute 'run_trainingg'"):
        cls.run_trainingg


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh state of the package (torch stays loaded for speed)."""
    names = sorted(n for n in _modules() if not n.endswith("__main__"))  # __main__ runs the CLI
    code = f"""
import importlib, sys, warnings, torch, torchvision, timm
warnings.simplefilter("ignore")  # timm warns when a model name is registered again
failed = []
for name in {names!r}:
    for m in [m for m in sys.modules if m == "litvit" or m.startswith("litvit.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
print("\\n".join(failed))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "", r.stdout


@pytest.mark.parametrize("path, names", [
    ("litvit", ["LIT", "create_model", "load_checkpoint", "CheckpointMismatchError"]),
    ("litvit.models", ["load_checkpoint", "load_weights", "checkpoint_filter_fn", "MODEL_NAMES"]),
    ("litvit.models.lit", ["resize_abs_pos_embed", "resize_rel_pos_table", "relative_position_index"]),
    ("litvit.models.convert", ["load_state_dict_file", "CheckpointMismatchError", "official_to_litvit"]),
    ("litvit.detection", ["retinanet", "mask_rcnn", "build_detector", "parameter_table", "DETECTORS"]),
    ("litvit.segmentation", ["semantic_fpn", "confusion_matrix", "segmentation_metrics", "IGNORE_INDEX",
                             "SyncBatchNorm", "parameter_table"]),
    ("litvit.dense_data", ["CocoDetection", "SegmentationDataset", "read_image", "IMAGE_EXTENSIONS", "IGNORE_INDEX"]),
    ("litvit.data", ["ImageFolder", "DigitsDataset", "UnreadableImageError", "IMG_EXTENSIONS", "find_images"]),
    ("litvit.engine", ["Task", "TrainConfig", "fit", "evaluate", "load_checkpoint", "save_checkpoint_atomic",
                       "OutputLock", "OutputLockedError", "CheckpointWriteError", "param_groups"]),
    ("litvit.cli", ["main", "build_parser", "one_line", "CLIError", "warn_grid_change"]),
    ("litvit.tasks.detection", ["DetectionTask", "coco_evaluate", "coco_results", "add_parsers", "resolved_config"]),
    ("litvit.tasks.segmentation", ["SegmentationTask", "colorize", "add_parsers", "resolved_config"]),
    ("litvit.tasks.classification", ["ClassificationTask", "validate_checkpoint", "task_for_checkpoint", "add_parsers",
                                     "resolved_config", "run_training", "cmd_train", "print_config"]),
    ("litvit.cli.args", ["warn_grid_change", "check_model_kwargs"]),
    ("litvit.tools.bench", ["cmd_bench", "add_parsers", "bench_models", "measure_memory"]),
    ("litvit.tools.export", ["cmd_export", "add_parsers", "export_onnx", "check_onnx"]),
    ("litvit.tools.flops", ["cmd_flops", "add_parsers", "count_flops", "profile_model"]),
    ("litvit.tools.viz.offsets", ["cmd_offsets", "collect_offsets"]),
    ("litvit.tools.viz.attention", ["cmd_attention", "collect_attention"]),
    ("litvit.tools.viz", ["load_model", "checkpoint_metadata", "load_image", "IMAGE_EXTENSIONS"]),
])
def test_old_import_paths(path, names):
    import importlib
    mod = importlib.import_module(path)
    assert [n for n in names if not hasattr(mod, n)] == []


def test_one_error_type_per_failure():
    """Each error type is one class, whichever floor names it."""
    import litvit
    from litvit import data, engine, errors
    from litvit.cli import CLIError
    from litvit.models import convert
    assert litvit.CheckpointMismatchError is convert.CheckpointMismatchError is errors.CheckpointMismatchError
    assert data.UnreadableImageError is errors.UnreadableImageError
    assert engine.OutputLockedError is errors.OutputLockedError and engine.CheckpointWriteError is errors.CheckpointWriteError
    assert CLIError is errors.CLIError
    assert issubclass(errors.UnreadableImageError, OSError) and issubclass(errors.UnreadableImageError, ValueError)


def test_engine_functions_are_short():
    """Each function of the engine does one job: none is longer than 80 lines (docstring included),
    so a training loop cannot grow back into one function that shares its state through closures."""
    long = []
    for path in sorted((ROOT / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "engine functions over 80 lines: " + ", ".join(long)
