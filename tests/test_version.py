"""The version is written once, in pyproject.toml, and read from the package metadata."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import astrid
from astrid.plugins import package_version, plugin_info

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = [  # (pyproject.toml directory, import name)
    (ROOT, "astrid"),
    (ROOT / "plugins" / "astrid-postgres", "astrid_postgres"),
    (ROOT / "plugins" / "astrid-openai", "astrid_openai"),
    (ROOT / "plugins" / "astrid-anthropic", "astrid_anthropic"),
]


def _project(directory: Path) -> dict[str, str]:
    with (directory / "pyproject.toml").open("rb") as fh:
        project: dict[str, str] = tomllib.load(fh)["project"]
    return project


def test_astrid_version_is_the_package_metadata() -> None:
    assert astrid.__version__ == version("astrid-runtime") == _project(ROOT)["version"]
    builtin = [p for p in plugin_info() if p["name"].startswith("astrid.default_plugins.")]
    assert builtin and {p["version"] for p in builtin} == {astrid.__version__}


@pytest.mark.parametrize(("directory", "module"), PACKAGES[1:], ids=[p[1] for p in PACKAGES[1:]])
def test_plugin_versions_are_their_package_metadata(directory: Path, module: str) -> None:
    project = _project(directory)
    try:
        installed = version(project["name"])
    except PackageNotFoundError:
        pytest.skip(f"{project['name']} is not installed")
    assert importlib.import_module(module).__version__ == installed


@pytest.mark.parametrize(("directory", "module"), PACKAGES, ids=[p[1] for p in PACKAGES])
def test_no_source_file_repeats_the_version(directory: Path, module: str) -> None:
    """pyproject.toml is the one place a version is written (``__version__ = "0.2.0.dev0"`` was
    a second one, free to drift)."""
    written = f'"{_project(directory)["version"]}"'
    package = directory / module
    repeats = [
        str(path.relative_to(ROOT))
        for path in sorted(package.rglob("*.py"))
        if written in path.read_text(encoding="utf-8")
    ]
    assert repeats == []


def test_an_uninstalled_distribution_has_an_unknown_version() -> None:
    assert package_version("astrid-no-such-distribution") == "0+unknown"


def test_import_astrid_does_not_read_the_metadata() -> None:
    code = (
        "import sys, astrid; assert 'astrid._version' not in sys.modules; "
        "v = astrid.__version__; assert 'astrid._version' in sys.modules; print(v)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == version("astrid-runtime")
