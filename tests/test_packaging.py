"""A wheel, installed without the source checkout, carries the benchmark protocols that `selfalign eval` reads."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_listed_packages_cover_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "selfalign").rglob("__init__.py")}
    assert listed == found | {"selfalign.protocols"}


def test_wheel_carries_the_protocols(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                            "-w", str(tmp_path / "wheel")], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "wheel").glob("selfalign-*.whl"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    probe = ("import selfalign.evaluation.common as c, selfalign.evaluation.alpaca_eval as ae; "
             "print(c.__file__); print(c.EVALS_DIR); "
             "print(sorted(c.load_protocol(b)['benchmark'] for b in ('gsm8k', 'mt_bench', 'alpaca_eval'))); "
             "print(len(ae.judge_template(None)) > 100)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    module_file, evals_dir, benchmarks, template_ok = run.stdout.splitlines()
    assert module_file.startswith(str(target)), "the installed wheel, not the checkout, must be imported"
    assert evals_dir == str(target / "selfalign" / "protocols")
    assert benchmarks == "['alpaca_eval', 'gsm8k', 'mt_bench']" and template_ok == "True"
