"""action_recognition.py is the command line only; its run lives in evaluation/ (issue 17
item 8): evaluation.recognition (the run and its outputs), evaluation.probe (the linear probe),
evaluation.finetune (the fine-tune). The imports go one way: evaluation/ never imports a
command-line script."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_FUNCTIONS = {"build_parser", "recipe_purpose", "check_variants", "parse_args", "main",
                 "run"}
CLI_SCRIPTS = {"action_recognition", "action_retrieval", "action_detection", "pretrain", "cli"}


def top_level(path: Path) -> tuple[set, set]:
    """(names of the top-level def / class statements, names assigned at the top level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    defs = {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    assigned = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)}
    return defs, assigned


def imported_modules(path: Path) -> set:
    """Every module an import statement of ``path`` names, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_action_recognition_defines_the_command_line_only():
    defs, assigned = top_level(ROOT / "action_recognition.py")
    assert defs == CLI_FUNCTIONS, (f"action_recognition.py is the command line only; move "
                                   f"{sorted(defs - CLI_FUNCTIONS)} to evaluation/")
    assert assigned == {"MODE_DEFAULTS"}


def test_the_run_lives_in_evaluation():
    import evaluation.finetune as finetune
    import evaluation.probe as probe
    import evaluation.recognition as recognition

    assert {"evaluate", "result_tag", "training_positions", "write_outputs", "confusion_matrix",
            "write_confusion_csv", "write_confusion_png", "write_names"} <= set(vars(recognition))
    assert "run_linear" in vars(probe)
    assert {"Classifier", "Predictor", "build_model", "param_groups", "variant_loss",
            "check_head", "finetune_step", "finetune_loader", "finetune_state", "probe_head",
            "held_out_correct", "guard_decision", "lp_guard", "run_finetune",
            "variant_record"} <= set(vars(finetune))


@pytest.mark.parametrize("path", sorted((ROOT / "evaluation").glob("*.py")),
                         ids=lambda p: p.name)
def test_evaluation_never_imports_a_command_line_script(path):
    scripts = {name for name in imported_modules(path) if name.split(".")[0] in CLI_SCRIPTS}
    assert not scripts, f"evaluation/{path.name} imports {sorted(scripts)}"
