"""The command line: help, the demo, and one-line errors."""
import subprocess
import sys

from litvit.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "litvit", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out and "models" in out


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
