"""Every Python entry point and benchmark prints its --help (exit 0) with its own usage line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["pretrain.py", "action_recognition.py", "action_retrieval.py", "action_detection.py",
           "benchmarks/data_bench.py", "benchmarks/encoders.py", "benchmarks/eval_bench.py",
           "benchmarks/nwucla_select.py", "benchmarks/pretrain_step.py",
           "benchmarks/recipes_bench.py", "benchmarks/gpu_check.py", "benchmarks/stgcn_study.py",
           "benchmarks/detection_bench.py", "benchmarks/attention.py"]
MODULES = ["evaluation.baseline", "evaluation.fusion", "evaluation.report", "feeders.export",
           "feeders.inspect", "feeders.layouts", "feeders.prepare", "feeders.synthetic",
           "feeders.visualize", "models.__main__", "models.convert", "recipes",
           "evaluation.detection_floor", "feeders.untrimmed"]


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help(target):
    cmd = [sys.executable, target] if target.endswith(".py") else [sys.executable, "-m", target]
    out = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "--help" in out.stdout
    assert out.stderr == ""


# ----------------------------------------------------------------------------- help texts
class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def entry_parsers():
    """(name, parser) of every entry point, captured when its main() parses its arguments
    (and of every feeders.prepare format's parser)."""
    import argparse
    import importlib
    import runpy

    from feeders import prepare
    from feeders.formats import FORMATS

    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    out = []
    argparse.ArgumentParser.parse_args = capture
    try:
        for target in SCRIPTS + MODULES + EXTRA_MODULES:
            if target.endswith(".py"):
                sys.path.insert(0, str((ROOT / target).parent))
                try:
                    ns = runpy.run_path(str(ROOT / target), run_name="_help_probe")
                finally:
                    sys.path.pop(0)
                main = ns["main"]
            else:
                package_main = f"{target}.__main__" if target == "models" else target
                main = importlib.import_module(package_main).main
            try:
                main()
            except _Captured as got:
                out.append((target, got.parser))
    finally:
        argparse.ArgumentParser.parse_args = original
    out += [(f"feeders.prepare --format {fmt}", prepare.build_parser(fmt)) for fmt in FORMATS]
    return out


EXTRA_MODULES = ["evaluation.plots", "models.export"]


def test_every_flag_has_help_and_no_default_twice():
    import argparse

    problems = []
    for name, parser in entry_parsers():
        defaults_fmt = parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            if action.help == argparse.SUPPRESS:  # an internal flag, hidden on purpose
                continue
            if not action.help:
                problems.append(f"{name}: {flag} has no help text")
            elif defaults_fmt and ("%(default)" in action.help or "(default" in action.help):
                problems.append(f"{name}: {flag} states its default and the formatter adds it "
                                f"again: {action.help!r}")
    assert not problems, "\n".join(problems)
