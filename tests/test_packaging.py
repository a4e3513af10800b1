"""The wheel holds the library (with the native kernels' source) and the
license, nothing else: experiments/, benchmarks/ and tests/ run from a
checkout."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_metadata_names_the_license_and_only_the_library():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(name.split(".")[0] == "keras_vrnn" for name in include), include
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_wheel_contents(tmp_path):
    # Without build isolation (no network): the environment's setuptools,
    # which must understand the SPDX license field.
    setuptools = pytest.importorskip("setuptools")
    if int(re.match(r"\d+", setuptools.__version__).group()) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("keras_vrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"keras_vrnn", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert "keras_vrnn/native/vanilla_rnn_ops.cc" in names
    assert "keras_vrnn/native/step_kernels.h" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
