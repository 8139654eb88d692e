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


def test_demo_runs_on_a_real_photo():
    r = run_cli("demo", "--img-size", "64")
    assert r.returncode == 0, r.stderr
    assert "19,886,272 parameters" in r.stdout and "(512, 2, 2)" in r.stdout


def test_bad_input_is_one_line_and_nonzero():
    r = run_cli("demo", "--img-size", "100")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "multiples of 32" in r.stderr
