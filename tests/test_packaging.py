"""The package as users install it."""

from __future__ import annotations

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
