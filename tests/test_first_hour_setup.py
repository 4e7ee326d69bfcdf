"""A light, quiet ``make run`` (issue 20, item 1).

``make run`` installs the runtime only and ``make test`` adds the development tools and every
plugin; every pyproject declares its license as an SPDX expression with a setuptools that reads
it, so the build prints no deprecation banner. The time of a fresh clone's ``make run`` is
measured by hand (reported in the CHANGELOG), not asserted.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PYPROJECTS = [REPO / "pyproject.toml", *sorted(REPO.glob("plugins/*/pyproject.toml"))]


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_pyproject_declares_an_spdx_license_and_a_setuptools_that_reads_it(
    path: Path,
) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    license_ = data["project"]["license"]
    assert isinstance(license_, str), f"{path}: project.license must be an SPDX string"
    assert canonicalize_license_expression(license_) == license_
    (setuptools,) = [
        Requirement(r) for r in data["build-system"]["requires"] if r.startswith("setuptools")
    ]
    # setuptools 77 is the first to read an SPDX project.license without a warning.
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0")
    # The flat layout said explicitly: an editable install is a .pth entry, with no banner.
    assert data["tool"]["setuptools"]["package-dir"] == {"": "."}


def dry_run(target: str, tmp_path: Path) -> str:
    """What ``make -n TARGET`` would run for a virtualenv that does not exist yet."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        [make, "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def pip_installs(commands: str) -> list[str]:
    return [line for line in commands.splitlines() if "pip install" in line]


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    commands = dry_run("run", tmp_path)
    installs = pip_installs(commands)
    assert installs[-1].endswith("pip install --quiet -e .")
    assert "[dev]" not in commands and "plugins/" not in commands
    assert "astrid demo" in commands


def test_make_test_adds_the_development_tools_and_every_plugin(tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (plugins_line,) = [line for line in makefile.splitlines() if line.startswith("PLUGINS :=")]
    plugins = plugins_line.partition(":=")[2].split()
    commands = dry_run("test", tmp_path)
    (dev,) = [line for line in pip_installs(commands) if "'.[dev]'" in line]
    for name in plugins:
        assert f"plugins/astrid-{name}" in dev
    assert any("-m pytest -q tests" in line for line in commands.splitlines())
