"""``pip install .`` into a fresh virtual environment: both commands work from any folder, and shadow nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bootstrap
from tests.fixtures.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(requirements: Path) -> set[str]:
    """The ``name==version`` lines of a requirements file, following its ``-r`` includes."""
    pins: set[str] = set()
    for text in requirements.read_text().splitlines():
        line = text.split("#")[0].strip()
        if line.startswith("-r "):
            pins |= _pins(requirements.parent / line[3:].strip())
        elif line:
            pins.add(line)
    return pins


def test_the_extras_pin_what_the_requirements_files_pin() -> None:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    attach = _pins(ROOT / "bootstrap" / "requirements-attach.txt")
    assert set(project["dependencies"]) == attach
    assert set(extras["download"]) == _pins(ROOT / "bootstrap" / "requirements.txt") - attach
    everything = set(project["dependencies"]) | set(extras["download"]) | set(extras["operator"])
    dev = {pin for pin in extras["dev"] if not pin.startswith("imagenet-staging[")}
    assert everything | dev == _pins(ROOT / "requirements-dev.txt")


def test_every_package_of_the_tree_is_installed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {"imagenet_staging." + ".".join(p.parent.relative_to(ROOT).parts)
             for top in ("bootstrap", "cdk_app", "scripts") for p in (ROOT / top).rglob("__init__.py")}  # fmt: skip
    assert listed == found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the project installed from a copy of the tree (a build writes into its source)."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    tracked = subprocess.run(["git", "ls-files", "bootstrap", "cdk_app", "scripts", "pyproject.toml", "README.md"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for relpath in tracked:
        (source / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relpath, source / relpath)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the dependencies come from the machine's package index (a local mirror here: no network)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], check=True, capture_output=True)
    return venv


def test_the_installed_commands_run_from_any_folder(installed: Path, tmp_path: Path) -> None:
    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)

    operator, engine = installed / "bin" / "imagenet-staging", installed / "bin" / "imagenet-staging-engine"
    assert command(str(operator), "--version").stdout.strip() == f"imagenet-staging {bootstrap.__version__}"
    assert command(str(engine), "--version").stdout.strip() == f"imagenet-staging-engine {bootstrap.__version__}"
    plan = command(str(operator), "plan")
    assert plan.returncode == 0 and "total, one-off" in plan.stdout  # its price tables were installed with it
    assert "usage: imagenet-staging-engine attach" in command(str(engine), "attach", "--help").stdout
    # the download instance's packages are an extra: without them a stage says which one to install
    pack = command(str(engine), "pack", "--data-dir", str(tmp_path))
    assert pack.returncode == 2 and "pip install 'imagenet-staging[download]'" in pack.stderr
    assert "Traceback" not in pack.stderr
    # the bundled class table a hub source's labels are read against is installed next to the code that reads it
    (table,) = installed.glob("lib/python*/site-packages/imagenet_staging/bootstrap/dataset/ilsvrc2012_classes.tsv")
    assert table.read_bytes() == (ROOT / "bootstrap" / "dataset" / "ilsvrc2012_classes.tsv").read_bytes()


def test_the_install_shadows_no_other_distribution(installed: Path, tmp_path: Path) -> None:
    """Another distribution's top-level ``bootstrap`` keeps its name; ours lives under ``imagenet_staging``."""
    python = str(installed / "bin" / "python")
    for name in ("bootstrap", "scripts", "cdk_app"):
        probe = subprocess.run([python, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True,
                               check=False)  # fmt: skip
        assert probe.returncode != 0 and "No module named" in probe.stderr, name
    other = tmp_path / "other" / "bootstrap"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'another distribution'\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(other.parent)}
    mine = subprocess.run([str(installed / "bin" / "imagenet-staging-engine"), "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert re.fullmatch(r"imagenet-staging-engine \S+\n", mine.stdout)
    theirs = subprocess.run([python, "-c", "import bootstrap; print(bootstrap.WHO)"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert theirs.stdout.strip() == "another distribution"
