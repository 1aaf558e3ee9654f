"""Run mypy over pt2q as it is installed: the top-level folders mapped into one ``pt2q`` package.

pyproject maps ``quantizers/`` to ``pt2q.quantizers`` (and so on), a layout mypy cannot read from
the source tree; this builds a tree of symbolic links with the installed layout under
``build/typecheck`` and checks that, reporting paths relative to the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def link_tree() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shutil.rmtree(TREE, ignore_errors=True)
    folders = dict(config["package-dir"])
    for package in config["packages"]:  # a subpackage without a mapping lives in its parent's folder
        if package not in folders:
            parent, _, name = package.rpartition(".")
            folders[package] = f"{folders[parent]}/{name}"
    for package, folder in folders.items():
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            (target / source.name).symlink_to(source)


def main() -> int:
    link_tree()
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "pt2q"],
        cwd=TREE,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(TREE)},
    )
    # name the source files, not their links
    out = result.stdout
    for link in TREE.rglob("*.py"):
        out = out.replace(str(link.relative_to(TREE)), str(link.resolve().relative_to(ROOT)))
    sys.stdout.write(out)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
