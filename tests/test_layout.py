"""The dependency rule between sealog's layers, checked on every import in client/ and server/.

From the bottom up (docs/architecture.md): ``core`` (the RFC 6962 / C2SP verifier, stdlib and
``cryptography`` only), ``client`` (the gRPC log client and what it needs), the ``parties``
(monitor, witness, capture, which never import each other), ``server`` (the log server, the
only user of LMDB) and ``cli`` (the ``sealog`` command, which nothing imports). A module may
import only from its own layer or below, and a third-party package only when its layer lists
it. Every import counts: module-level, inside functions, under ``if TYPE_CHECKING:``, and
relative ones, resolved against the importing module's package.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The core: what a party needs to verify the log with no network code. New core modules
# are added here; everything else at the top of sealog.client is the client layer.
CORE_MODULES = frozenset(
    f"sealog.client.{name}"
    for name in (
        "hashing",
        "proof",
        "verify",
        "compact",
        "range_proof",
        "note",
        "checkpoint",
        "cosignature",
        "leaf",
        "errors",
        "answers",
        "note_keys",
        "_encoding",
        "tiles",
    )
)

PARTIES = ("monitor", "witness", "capture")

CORE = "core"
CLIENT = "client"
SERVER = "server"
CLI = "cli"
# sealog.v1 is the generated protobuf and gRPC code: usable wherever grpc is.
PROTO = "proto"
PARTY_LAYERS = tuple(f"party:{party}" for party in PARTIES)

# Which sealog layers each layer may import (its own included).
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    CORE: frozenset({CORE}),
    CLIENT: frozenset({CORE, CLIENT, PROTO}),
    **{party: frozenset({CORE, CLIENT, PROTO, party}) for party in PARTY_LAYERS},
    SERVER: frozenset({CORE, CLIENT, PROTO, *PARTY_LAYERS, SERVER}),
    CLI: frozenset({CORE, CLIENT, PROTO, *PARTY_LAYERS, SERVER, CLI}),
}

# Which third-party packages each layer may import (a name covers its submodules). The
# standard library is allowed everywhere. google.rpc (the rich error details, RetryInfo)
# comes with grpcio-status.
_CORE_THIRD_PARTY = frozenset({"cryptography"})
_CLIENT_THIRD_PARTY = _CORE_THIRD_PARTY | {
    "grpc",
    "grpc_status",
    "google.protobuf",
    "google.rpc",
    "aiohttp",
    "boto3",
    "botocore",
}
_SERVER_THIRD_PARTY = _CLIENT_THIRD_PARTY | {
    "lmdb",
    "grpc_health",
    "grpc_reflection",
    "prometheus_client",
}
ALLOWED_THIRD_PARTY: dict[str, frozenset[str]] = {
    CORE: _CORE_THIRD_PARTY,
    CLIENT: _CLIENT_THIRD_PARTY,
    **{party: _CLIENT_THIRD_PARTY for party in PARTY_LAYERS},
    SERVER: _SERVER_THIRD_PARTY,
    CLI: _SERVER_THIRD_PARTY,
}


def layer_of(module: str) -> str | None:
    """The layer of a sealog module by its dotted name, or None if the name is outside sealog.

    Precondition: ``module`` is an absolute dotted name. The cli is ``sealog.server.cli``
    and its submodules. A name under ``sealog`` that fits
    no layer (say ``sealog.tools``) is the ``"unknown"`` layer, which no layer may import.
    """
    parts = module.split(".")
    if parts[0] != "sealog":
        return None
    if parts[:2] == ["sealog", "v1"]:
        return PROTO
    if parts[:2] == ["sealog", "client"]:
        if len(parts) == 2:
            return CLIENT
        if parts[2] in PARTIES:
            return f"party:{parts[2]}"
        return CORE if ".".join(parts[:3]) in CORE_MODULES else CLIENT
    if parts[:2] == ["sealog", "server"]:
        if len(parts) > 2 and parts[2] == "cli":
            return CLI
        return SERVER
    return "unknown"


def module_name(path: Path) -> tuple[str, bool]:
    """The import name of a source file under client/ or server/, and whether it is a package.

    ``client/x.py`` is ``sealog.client.x``, ``client/monitor/__init__.py`` is the package
    ``sealog.client.monitor``, ``server/cli/x.py`` is ``sealog.server.cli.x`` (the
    setuptools package-dir mapping in pyproject.toml).
    """
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(["sealog", *parts]), is_package


def _resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``importer``."""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        package = package[: -(level - 1)]
    return ".".join([*package, target] if target else package)


def imported_modules(module: str, is_package: bool, source: str) -> Iterator[str]:
    """Every module ``source`` imports, as absolute dotted names, wherever the import sits.

    ``from package import name`` yields ``package.name`` when that is one of the modules
    under client/ or server/ (a submodule), else ``package``. Importing a submodule runs its
    parent packages' ``__init__`` too; those are not counted as a dependency.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            if layer_of(base) is None:
                yield base
                continue
            for alias in node.names:
                # A sealog package's attributes are its submodules; a module's are not.
                candidate = f"{base}.{alias.name}"
                yield candidate if alias.name != "*" and candidate in _known_modules() else base


@functools.cache
def _known_modules() -> frozenset[str]:
    """The names of the modules under client/ and server/."""
    return frozenset(module_name(path)[0] for path in source_files())


def violations(module: str, is_package: bool, source: str) -> list[str]:
    """Each import in ``source`` (the text of ``module``) that breaks the dependency rule.

    Precondition: ``module`` is a sealog module with a layer (see :func:`layer_of`).
    """
    importer_layer = layer_of(module)
    assert importer_layer in ALLOWED_LAYERS, f"{module} is in no layer"
    found: list[str] = []
    for imported in imported_modules(module, is_package, source):
        top = imported.split(".")[0]
        imported_layer = layer_of(imported)
        if imported_layer is not None:
            if imported_layer not in ALLOWED_LAYERS[importer_layer]:
                found.append(
                    f"{module} -> {imported} "
                    f"(layer {importer_layer} may not import layer {imported_layer})"
                )
        elif top in sys.stdlib_module_names:
            continue
        elif not any(
            imported == allowed or imported.startswith(f"{allowed}.")
            for allowed in ALLOWED_THIRD_PARTY[importer_layer]
        ):
            found.append(
                f"{module} -> {imported} "
                f"(layer {importer_layer} may not import third-party {imported})"
            )
    return found


def source_files() -> list[Path]:
    """Every .py file under client/ and server/ (sealog.v1 is generated and not walked)."""
    return sorted(
        path
        for folder in ("client", "server")
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


# --- the checker itself -------------------------------------------------------------------------


def test_module_names_and_layers() -> None:
    assert module_name(ROOT / "client" / "hashing.py") == ("sealog.client.hashing", False)
    assert module_name(ROOT / "client" / "monitor" / "__init__.py") == (
        "sealog.client.monitor",
        True,
    )
    assert module_name(ROOT / "server" / "cli" / "monitor.py") == (
        "sealog.server.cli.monitor",
        False,
    )
    assert layer_of("sealog.client.hashing") == CORE
    assert layer_of("sealog.client") == CLIENT
    assert layer_of("sealog.client.log_client") == CLIENT
    assert layer_of("sealog.client.witness.protocol") == "party:witness"
    assert layer_of("sealog.server.log") == SERVER
    assert layer_of("sealog.server.cli") == CLI
    assert layer_of("sealog.server.cli.operator") == CLI
    assert layer_of("sealog.server.client_options") == SERVER
    assert layer_of("sealog.v1.log_pb2") == PROTO
    assert layer_of("grpc") is None


PLANTED = """
from __future__ import annotations
import hashlib
from typing import TYPE_CHECKING
from cryptography.hazmat.primitives import hashes
from . import hashing
from .monitor import follow
if TYPE_CHECKING:
    from sealog.server.storage import Storage

def later() -> None:
    import grpc
    from ..server.cli import operator
"""


def test_the_checker_catches_planted_violations() -> None:
    found = violations("sealog.client.proof", False, PLANTED)
    assert found == [
        "sealog.client.proof -> sealog.client.monitor.follow "
        "(layer core may not import layer party:monitor)",
        "sealog.client.proof -> sealog.server.storage (layer core may not import layer server)",
        "sealog.client.proof -> grpc (layer core may not import third-party grpc)",
        "sealog.client.proof -> sealog.server.cli.operator (layer core may not import layer cli)",
    ]


def test_parties_may_not_import_each_other_or_the_server() -> None:
    source = (
        "from sealog.client import leaf, log_client\n"
        "from sealog.client.monitor import state\n"
        "from ..witness.protocol import CosignRequest\n"
        "import lmdb\n"
        "from sealog.server import storage\n"
    )
    assert violations("sealog.client.monitor.follow", False, source) == [
        "sealog.client.monitor.follow -> sealog.client.witness.protocol "
        "(layer party:monitor may not import layer party:witness)",
        "sealog.client.monitor.follow -> lmdb "
        "(layer party:monitor may not import third-party lmdb)",
        "sealog.client.monitor.follow -> sealog.server.storage "
        "(layer party:monitor may not import layer server)",
    ]


def test_relative_imports_resolve_against_the_package() -> None:
    assert list(imported_modules("sealog.client.monitor", True, "from . import follow")) == [
        "sealog.client.monitor.follow"
    ]
    assert list(imported_modules("sealog.client.monitor.follow", False, "from .. import leaf")) == [
        "sealog.client.leaf"
    ]
    assert list(imported_modules("sealog.server.log", False, "from ..client.proof import x")) == [
        "sealog.client.proof"
    ]


# --- the tree -----------------------------------------------------------------------------------


def test_every_import_follows_the_dependency_rule() -> None:
    files = source_files()
    assert len(files) > 50, f"found only {len(files)} modules under client/ and server/"
    found: list[str] = []
    for path in files:
        module, is_package = module_name(path)
        found += violations(module, is_package, path.read_text(encoding="utf-8"))
    if found:
        pytest.fail(
            f"{len(found)} import(s) break the dependency rule:\n" + "\n".join(found),
            pytrace=False,
        )
