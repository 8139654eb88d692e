"""The command line: help, the demo, and one-line errors."""
import re
import subprocess
import sys

import pytest

from litvit.cli import main

pytestmark = pytest.mark.cli

# Every command and, for the groups, every subcommand, with a word of its one-line help.
COMMANDS = {
    "models": "parameter counts", "train": "train a LIT classifier", "validate": "top-1",
    "predict": "classify the images", "demo": "embedded digits", "shards": "tar shards", "bench": "throughput",
    "export": "ONNX", "flops": "FLOPs", "viz": "figures", "detect": "object detection", "segment": "semantic segmentation",
}
SUBCOMMANDS = {
    "viz": {"offsets": "DTM sampling locations", "attention": "attention maps"},
    "detect": {"train": "train a detector", "eval": "box / mask AP", "predict": "detections",
               "params": "parameter counts"},
    "segment": {"train": "train Semantic FPN", "eval": "mIoU", "predict": "segmentation",
                "params": "parameter counts"},
}


def _listed(help_text):
    """{name: one-line help} of the command list in an argparse help text (help wrapped over lines joined)."""
    listed, name = {}, None
    for line in help_text.split("positional arguments:", 1)[1].split("options:", 1)[0].splitlines():
        m = re.match(r"^ {4}(\S+)(?: +(.*))?$", line)
        if m and not m.group(1).startswith("{"):
            name = m.group(1)
            listed[name] = m.group(2) or ""
        elif name and line.strip():
            listed[name] = (listed[name] + " " + line.strip()).strip()
    return listed


def _help(argv):
    """Exit status of ``main(argv)`` that prints a help text (argparse exits, or main returns)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "litvit", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands(capsys):
    assert main([]) == 2
    listed = _listed(capsys.readouterr().out)
    assert list(listed) == list(COMMANDS)
    for name, words in COMMANDS.items():
        assert words in listed[name], (name, listed[name])
    for group, subcommands in SUBCOMMANDS.items():
        assert _help([group, "--help"]) == 0
        listed = _listed(capsys.readouterr().out)
        assert list(listed) == list(subcommands), group
        for name, words in subcommands.items():
            assert words in listed[name], (group, name, listed[name])
    for name in COMMANDS:  # every command has its own help
        assert _help([name, "--help"]) == 0 and f"usage: litvit {name}" in capsys.readouterr().out, name


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "19,886,272" in out and "87,292,384" in out


TINY = ["--img-size", "32", "--embed-dims", "16", "32", "48", "64", "--depths", "1", "1", "1", "1",
        "--num-heads", "1", "2", "3", "4", "--mlp-ratios", "2", "2", "2", "2", "--no-progress"]


def test_demo_trains_and_reports(tmp_path, capsys):
    # one short epoch of a tiny model: the 99% target is not reached (exit 1), but the report is complete
    code = main(["demo", "--output", str(tmp_path), "--epochs", "1", *TINY])
    out = capsys.readouterr().out
    assert code == 1
    assert "LIT on the embedded digits: validation top-1" in out and "NOT reached" in out
    for name in ("best.pth", "curves.png", "log.jsonl"):
        assert str(tmp_path / name) in out and (tmp_path / name).exists()


def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path), "--img-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 and "multiple of 32" in err


def test_errors_from_a_real_process_are_one_line(tmp_path):
    """The installed entry point, as a user runs it: one line on stderr, exit 2, no traceback."""
    cases = [
        (("validate", "--checkpoint", str(tmp_path / "nope.pth")), "checkpoint not found"),
        (("flops", "lit_xl"), "unknown model 'lit_xl'"),
        (("viz", "offsets", str(tmp_path / "nope.png"), "--model", "lit_ti"), "image not found"),
    ]
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert message in r.stderr


def test_data_loader_worker_errors_become_one_line():
    from litvit.cli import one_line
    folded = OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                     '  File "x.py", line 1, in f\nOSError: cannot open image /data/a.jpg')
    assert one_line(folded) == "cannot open image /data/a.jpg"
    assert one_line(ValueError("two\nlines")) == "two lines"
