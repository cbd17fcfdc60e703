"""The package's shape: SDKs at their edges, layers that only import downwards, no cycles.

    cli  >  loop  >  targets (kubernetes | docker)  >  settings  >  kbld  >  shared

The shared modules (errors, events, logs, blocking) import no layer above them.

Imports inside functions count as much as those at the top: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "devloop"
ALLOWED = {
    "docker": {"kbld/engine.py", "kbld/building.py", "targets/docker/containers.py"},
    # streaming.py: the portforward websocket exists only in the SDK (kubernetes.stream)
    "kubernetes": {"targets/kubernetes/applying.py", "targets/kubernetes/streaming.py"},
}
# A module under the first prefix may not import one under any of the others.
FORBIDDEN = [
    ("devloop.kbld", ("devloop.loop", "devloop.targets", "devloop.cli", "devloop.settings")),
    ("devloop.targets", ("devloop.loop", "devloop.cli")),
    ("devloop.targets.docker", ("devloop.targets.kubernetes",)),
    ("devloop.targets.kubernetes", ("devloop.targets.docker",)),
    ("devloop.loop", ("devloop.cli",)),
]
SUBPACKAGES = ("devloop.kbld", "devloop.loop", "devloop.targets", "devloop.cli", "devloop.settings")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, anywhere in the file (functions and TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # `from devloop.x import y` may name the module devloop.x.y
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def modules() -> dict[str, set[str]]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in found} - {name} for name, path in found.items()}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_only_the_edge_modules_import_the_sdks() -> None:
    offenders = [
        f"{name} imports {sdk}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for sdk, allowed in ALLOWED.items()
        if sdk in {m.split(".")[0] for m in imports(path)}
        and (name := str(path.relative_to(PACKAGE))) not in allowed
    ]
    assert offenders == []


def test_layers_only_import_downwards() -> None:
    offenders = [
        f"{module} imports {imported}"
        for module, imported_set in sorted(modules().items())
        for imported in sorted(imported_set)
        for layer, forbidden in FORBIDDEN
        if under(module, layer) and any(under(imported, f) for f in forbidden)
    ]
    assert offenders == []


def test_the_shared_modules_import_no_subpackage() -> None:
    offenders = [
        f"{module} imports {imported}"
        for module, imported_set in sorted(modules().items())
        if not any(under(module, p) for p in SUBPACKAGES)
        for imported in sorted(imported_set)
        if any(under(imported, p) for p in SUBPACKAGES)
    ]
    assert offenders == []


def test_there_is_no_import_cycle() -> None:
    edges = modules()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in seen and nxt > path[0]:  # each cycle once, from its smallest node
                seen.add(nxt)
                visit(nxt, [*path, nxt], seen)

    for start in sorted(edges):
        visit(start, [start], {start})
    assert cycles == []


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
