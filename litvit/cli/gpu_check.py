"""``make gpu-check``: the command line of :mod:`litvit.tools.gpu_check` (``python -m
litvit.cli.gpu_check --out gpu-check.json``; exit 1 when a check fails or no GPU is present)."""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from ..tools import gpu_check as G
from ..tools.gpu_check import CHECKS, run_checks

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litvit.cli.gpu_check", description=G.__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="the JSON report (default: gpu-check.json)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    parser.add_argument("--compile-models", nargs="+", default=["lit_ti"],
                        help="models of the compile check (inductor takes ~30 s a graph; default: lit_ti)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run_checks(args.only, out, tuple(args.compile_models))
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    failed = [k for k, v in report["checks"].items() if v["status"] != "ok"]
    print(f"[gpu-check] {report.get('gpu')} torch {report['torch']}: {len(report['checks']) - len(failed)} ok, "
          f"{len(failed)} failed {failed if failed else ''}-> {out}")
    return 1 if failed or "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
