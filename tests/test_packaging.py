"""The package and its licences: the farm is Apache-2.0, the Blender add-on GPL-3.0-or-later
(Blender wants add-ons GPL-compatible); a wheel and an sdist built by the real build backend
carry the licence text and print no licence warning."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "blender"))
import build as addon_build  # noqa: E402  (blender/build.py)


def test_pyproject_names_the_licence_as_an_spdx_expression_and_its_file():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice


def test_the_addon_is_gpl_3_or_later_and_ships_its_licence():
    manifest = tomllib.loads((addon_build.SOURCE / "blender_manifest.toml").read_text())
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    licence = addon_build.SOURCE / "LICENSE"
    text = licence.read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert licence in addon_build.sources()  # so both add-on zips carry it


def test_wheel_and_sdist_carry_the_licence_and_build_without_a_licence_warning(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "farm", src / "farm", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    for hook in ("build_wheel", "build_sdist"):  # what pip calls, each in a fresh process
        done = subprocess.run(
            [sys.executable, "-W", "always", "-c",
             f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])",
             str(out)],
            cwd=src, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "licen" not in done.stderr.lower(), done.stderr  # warnings go to stderr
    (wheel,) = out.glob("farm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read("farm-0.1.0.dist-info/METADATA"))
        licence = z.read("farm-0.1.0.dist-info/licenses/LICENSE")
        names = set(z.namelist())
    # farm web's pages, styles and script are installed with it (no build step)
    web = REPO / "farm" / "web"
    assert {p.relative_to(REPO).as_posix() for p in (web / "templates").glob("*.html")} | {
        p.relative_to(REPO).as_posix() for p in (web / "static").glob("*.*")
    } <= names
    assert "farm/web/templates/scene.html" in names and "farm/web/static/web.js" in names
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    assert meta["License"] is None  # the old free-text field is gone
    assert licence == (REPO / "LICENSE").read_bytes()
    (sdist,) = out.glob("farm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert "farm-0.1.0/LICENSE" in tar.getnames()
