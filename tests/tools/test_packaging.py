"""The wheel carries what the commands read at run time: an install from it works without the
repository (``edgecap devices config`` once read its template from outside the package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import REPO

PACKAGES = {"contracts", "runtime", "edge_agent", "bridge", "cloud", "modelbuild", "devtools", "edgecap"}
DATA = {
    "edgecap/admin/mosquitto/mosquitto.conf",
    "contracts/schema/edgecap-v1.schema.json",
    "devtools/samples/sample.wav",
    "cloud/dashboard/templates/base.html",
    "cloud/dashboard/static/vendor/htmx.min.js",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source (an in-tree build would leave build/ in the
    repository, and setuptools packs whatever a stale build/ still holds)."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "edgecap"
    skip = shutil.ignore_patterns(".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("edgecap-*.whl")
    return found


def test_the_wheel_holds_every_package_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if not n.startswith("edgecap-")} == PACKAGES
    assert DATA <= names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_from_the_wheel_the_operator_commands_find_their_templates(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import json, sys, edgecap.admin.devices as d; from edgecap.cli import main;"
        "rc = main(['devices', 'config', '--output', sys.argv[1]]);"
        "print(json.dumps({'rc': rc, 'module': d.__file__}))"
    )
    conf = tmp_path / "mosquitto.conf"
    # run outside the repository, with the unpacked wheel first on the path
    done = subprocess.run(
        [sys.executable, "-c", code, str(conf)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    assert Path(result["module"]).is_relative_to(site)
    text = conf.read_text()
    assert "allow_anonymous false" in text and "\nplugin_opt_config_file " in text
