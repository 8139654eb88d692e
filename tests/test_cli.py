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


def test_demo_trains_and_reports(tmp_path):
    # one short epoch of a tiny model: the 99% target is not reached (exit 1), but the report is complete
    r = run_cli("demo", "--output", str(tmp_path), "--epochs", "1", "--max-steps", "22", *TINY)
    assert r.returncode == 1, r.stderr
    assert "LIT on the embedded digits: validation top-1" in r.stdout and "NOT reached" in r.stdout
    for name in ("best.pth", "curves.png", "log.jsonl"):
        assert str(tmp_path / name) in r.stdout and (tmp_path / name).exists()


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    r = run_cli("demo", "--output", str(tmp_path), "--img-size", "100")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "multiple of 32" in r.stderr
