"""pt2q installs as one distribution whose top-level folders are the layers of one ``pt2q`` package.

pyproject maps ``quantizers/`` to ``pt2q.quantizers``, ``lowering/`` to ``pt2q.lowering`` and so on.
An editable install (what development uses) resolves that mapping through a finder; a wheel (what
users get) copies the folders into place. This builds the wheel, installs it into an empty folder and
imports every module from there, so a module the mapping misses fails here rather than for a user.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = []
    for package, folder in package_dir.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules.append(".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return sorted(modules)


def test_every_module_imports_from_a_built_wheel(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("pt2q-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    modules = _modules()
    script = (
        "import importlib, json, sys\n"
        f"files = {{m: importlib.import_module(m).__file__ for m in {modules!r}}}\n"
        "print(json.dumps(files))\n"
    )
    # run outside the source tree, with only the installed wheel on the path ahead of site-packages
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    files = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(files) == set(modules)
    outside = {m: f for m, f in files.items() if not str(f).startswith(str(site))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
