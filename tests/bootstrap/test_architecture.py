"""The shape of the code: programs import only shared modules, nothing grows past a reader's span."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.settings import PrepConfig
from tests.fixtures.paths import ROOT

PROGRAMS = {"fetch", "pack", "instance", "gpu"}
SHARED = {"contract", "common", "dataset", "settings", "layout"}
"""What every program may import (besides itself); ``engine`` and ``cli`` compose the programs."""
LOWER = {
    "contract": {"contract"},
    "common": {"common"},
    "dataset": {"contract", "common", "dataset", "layout", "settings"},
}
"""The lowest layers import only from themselves and the layers below."""
PRODUCTION = ("bootstrap", "cdk_app", "scripts")


def modules(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def bootstrap_imports(path: Path) -> Iterator[str]:
    """The ``bootstrap`` sub-package (or top module) each import of ``path`` names."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bootstrap" and len(parts) > 1:
                yield parts[1]


def owner(path: Path) -> str:
    parts = path.relative_to(ROOT / "bootstrap").parts
    return parts[0] if len(parts) > 1 else path.stem


def test_programs_import_only_shared_modules() -> None:
    crossing = []
    for path in modules("bootstrap"):
        own = owner(path)
        allowed = LOWER.get(own, SHARED | {own}) if own in PROGRAMS | set(LOWER) else None
        if allowed is None:
            continue
        crossing += [
            f"{path.relative_to(ROOT)} imports bootstrap.{t}" for t in bootstrap_imports(path) if t not in allowed
        ]
    assert not crossing, "\n".join(crossing)


def test_the_gpu_agent_needs_nothing_the_download_instance_installs() -> None:
    """gpu/ ships with requirements-attach.txt (boto3 only): it must not reach the data path's packages."""
    reached = {t for p in modules("bootstrap/gpu") for t in bootstrap_imports(p)}
    assert reached <= {"gpu", "common", "contract"}, reached


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules(*PRODUCTION) if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def _is_construct_constructor(node: ast.FunctionDef, path: Path) -> bool:
    return node.name == "__init__" and path.is_relative_to(ROOT / "cdk_app" / "constructs")


def test_no_function_over_60_lines() -> None:
    long = []
    for path in modules(*PRODUCTION):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and not _is_construct_constructor(node, path):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "\n".join(long)


@pytest.mark.parametrize(
    "package", sorted(p.name for p in (ROOT / "bootstrap").iterdir() if (p / "__init__.py").exists())
)
def test_readme_layout_names_every_package(package: str) -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    assert f"  {package}/" in layout, f"README's layout section does not say what bootstrap/{package}/ is for"


def _imports_anything(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    return any(isinstance(n, ast.Import) or (isinstance(n, ast.ImportFrom) and n.module != "__future__") for n in body)


def test_package_inits_import_nothing() -> None:
    """An import in a package's __init__ loads with every module of it; the GPU agent must stay light.

    ``engine`` is the exception: it is the composition root and its ``Engine`` is the package's face.
    """
    busy = [p for p in (ROOT / "bootstrap").rglob("__init__.py") if p.parent.name != "engine" and _imports_anything(p)]
    assert not busy, busy


@pytest.mark.parametrize("key", sorted(f.name for f in dataclasses.fields(PrepConfig)))
def test_readme_configuration_table_names_every_key(key: str) -> None:
    table = (ROOT / "README.md").read_text().split("### Configuration", 1)[1].split("\n### ", 1)[0]
    assert f"`{key}`" in table, f"README's configuration table does not say what {key} is"
