"""The SDKs stay at the edge: only named modules may import docker or kubernetes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "devloop"
ALLOWED = {
    "docker": {"kbld/building.py", "targets/docker/containers.py"},
    "kubernetes": {"targets/kubernetes/applying.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_edge_modules_import_the_sdks() -> None:
    offenders = [
        f"{name} imports {sdk}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for sdk, allowed in ALLOWED.items()
        if sdk in imported_roots(path) and (name := str(path.relative_to(PACKAGE))) not in allowed
    ]
    assert offenders == []


def test_resolve_does_not_import_docker_or_kubernetes_at_start_up() -> None:
    code = (
        "import sys, devloop.cli, devloop.kbld.pipeline;"
        "devloop.cli.build_parser();"
        "print(sorted(m for m in ('docker', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_digest_only_resolve_imports_no_async_logging_or_tls_stack(tmp_path: Path) -> None:
    digest = "sha256:" + "0" * 64
    manifest = tmp_path / "one.yml"
    manifest.write_text(
        "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n"
        f"- image: app:1\n  newImage: reg.local/app@{digest}\n  preresolved: true\n"
        "---\nkind: Pod\nspec:\n  containers:\n"
        f"  - image: app:1\n  - image: reg.local/db@{digest}\n"
    )
    heavy = ("anyio", "structlog", "ssl", "logging", "devloop.settings", "devloop.kbld.registry")
    code = (
        "import contextlib, io, sys, devloop.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = devloop.cli.main(['resolve', '-f', {str(manifest)!r}], io.StringIO())\n"
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"
