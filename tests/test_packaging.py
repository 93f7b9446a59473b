"""The package as users install it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_building_the_wheel_prints_no_deprecation_and_ships_py_typed(tmp_path: Path) -> None:
    """`pip wheel .` (what every install runs) builds without setuptools'
    deprecation banner (the licence is an SPDX string) and the wheel holds
    py.typed and the entry points."""
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout + completed.stderr
    assert "Deprecat" not in output and "deprecat" not in output, output
    [wheel] = tmp_path.glob("flask_chest_otel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "flask_chest_otel/py.typed" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "influxdb = flask_chest_otel.autoconfig:InfluxDBEnvMetricExporter" in text
    # MIT requires the notice in every copy: the wheel carries LICENSE, and its
    # metadata names it.
    [licence] = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    assert zipfile.ZipFile(wheel).read(licence) == (REPO / "LICENSE").read_bytes()
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in headers and "License-File: LICENSE" in headers


def test_the_licence_is_mit_with_the_authors_notice() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the flask_chest_otel authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_lint_and_type_check_tools_are_pinned() -> None:
    """A new ruff or mypy release (or new stubs) cannot turn a fresh clone red."""
    # (tomllib is 3.11+; the pins are plain "name==version" lines of the test extra)
    pyproject = (REPO / "pyproject.toml").read_text()
    test_extra = pyproject.split("\ntest = [", 1)[1].split("\n]", 1)[0]
    pinned = dict(re.findall(r'^\s*"([A-Za-z0-9_.-]+)==([^"]+)"', test_extra, re.M))
    assert set(pinned) >= {"ruff", "mypy", "types-requests", "types-PyYAML"}
    for name, version in pinned.items():
        assert importlib.metadata.version(name) == version, name


def test_make_demo_installs_the_package_alone() -> None:
    """`make demo` installs no extra (the test and bench extras are 50 more
    packages the demo does not use); `make test` still installs both."""
    makefile = (REPO / "Makefile").read_text()
    recipes = dict(re.findall(r"^([^\s:#][^:]*):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M))
    [demo_stamp] = re.findall(r"^demo: (\S+)", makefile, re.M)
    assert demo_stamp in recipes
    assert "pip install -q -e .\n" in recipes[demo_stamp]
    assert "[" not in recipes[demo_stamp]
    assert "-e '.[test,bench]'" in recipes["$(VENV)/.installed"]
    assert re.search(r"^test: \$\(VENV\)/\.installed", makefile, re.M)
