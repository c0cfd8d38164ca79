"""What a release carries: its version, its license and the shape of its wheel."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from sealog.server.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_prints_the_installed_metadata_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = importlib.metadata.version("sealog")
    assert capsys.readouterr().out == f"sealog {installed}\n"
    # An install left behind by an older checkout would print another version.
    assert installed == PYPROJECT["project"]["version"]


def test_the_license_file_is_the_apache_license_the_metadata_names() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text
    # PEP 639: no License classifier beside a license expression.
    assert not [c for c in PYPROJECT["project"]["classifiers"] if c.startswith("License ::")]


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources, with the backend installed here."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("client", "server", "proto"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    out = tmp_path / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("sealog-*.whl")
    return wheel


@pytest.mark.slow  # builds a wheel in a subprocess
def test_the_wheel_carries_the_license_and_only_the_sealog_package(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    version = PYPROJECT["project"]["version"]
    assert wheel.name == f"sealog-{version}-py3-none-any.whl"
    dist_info = f"sealog-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE")
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    headers = metadata.split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith("Classifier: License ::")]
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert "sealog = sealog.server.cli:main" in entry_points
    # Everything is under sealog/: no top-level server, client or proto package.
    assert {name.split("/")[0] for name in names} == {"sealog", dist_info}
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for data in ("sealog/v1/log.proto", "sealog/client/py.typed", "sealog/server/py.typed"):
        assert data in names
