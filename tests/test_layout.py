"""The layout's rules, read from the code itself (CONTRIBUTING.md, "Where code belongs").

- `models` imports nothing from the project;
- `pipelines` imports neither `models` nor `training`, nor torch;
- only `training` imports Ray Train;
- every import of project code goes through the one installed name, `avtime`;
- every package folder is installed, and the install claims no top-level name but `avtime`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "models", "training")
OLD_TOP = ("pipelines", "models", "training")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module name that `path` imports (absolute), with its line number."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file:line module` for each import under `package` that starts with a forbidden name."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return bad


@pytest.mark.unit
def test_imports_of_reads_absolute_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import a.b\nfrom c import d\nfrom . import e\ndef f():\n    import g\n")
    assert {n for _, n in imports_of(src)} == {"a.b", "c", "c.d", "g"}


@pytest.mark.unit
def test_models_import_nothing_from_the_project() -> None:
    assert violations("models", ("avtime.pipelines", "avtime.training", "ray")) == []


@pytest.mark.unit
def test_pipelines_import_neither_models_nor_training_nor_torch() -> None:
    forbidden = ("avtime.models", "avtime.training", "torch", "torchvision", "torchaudio")
    assert violations("pipelines", forbidden) == []


@pytest.mark.unit
def test_only_training_imports_ray_train() -> None:
    assert violations("pipelines", ("ray.train",)) == []
    assert violations("models", ("ray.train",)) == []
    assert violations("bench", ("ray.train",)) == []


@pytest.mark.unit
def test_project_code_is_imported_as_avtime() -> None:
    for top in ("pipelines", "models", "training", "tests", "bench"):
        assert violations(top, OLD_TOP) == [], f"bare project imports under {top}/"


@pytest.mark.unit
def test_every_package_folder_is_installed() -> None:
    """pyproject's package list names each folder that holds an __init__.py, and nothing else."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "avtime." + ".".join(init.parent.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for init in (ROOT / pkg).rglob("__init__.py")
    }
    assert listed == on_disk


@pytest.mark.integration
def test_install_does_not_shadow_another_models_package(tmp_path: Path) -> None:
    """A wheel of avtime holds only `avtime/`; installed ahead of a user's own `models` package,
    `import models` still finds the user's, and `avtime.models` is avtime's."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("avtime-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"avtime"}
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    theirs = tmp_path / "theirs" / "models"
    theirs.mkdir(parents=True)
    (theirs / "__init__.py").write_text("OWNER = 'theirs'\n")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "import models, avtime.models.losses as l\n"
        "print(models.OWNER, l.__file__.startswith(sys.argv[1]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(target), str(theirs.parent)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["theirs", "True"]
