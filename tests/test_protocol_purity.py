"""The protocol core stays sans-I/O: stdlib and the envelope only, no clock reads."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import dualchannel.protocol

PROTOCOL_DIR = Path(dualchannel.protocol.__file__).parent
FORBIDDEN_MODULES = {"anyio", "asyncio", "httpx", "httpx_sse", "livekit", "trio", "socket", "time"}
FORBIDDEN_CALLS = {"monotonic", "perf_counter", "time", "now", "utcnow", "sleep"}
ALLOWED_PACKAGE_IMPORTS = {"envelope", "errors"}


def _modules() -> list[Path]:
    files = sorted(PROTOCOL_DIR.glob("*.py"))
    assert files, "no protocol modules found"
    return files


def test_protocol_imports_only_stdlib_and_the_envelope() -> None:
    stdlib = sys.stdlib_module_names
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # siblings inside dualchannel.protocol
                if node.level == 2:
                    assert node.module in ALLOWED_PACKAGE_IMPORTS, f"{path.name}: {node.module}"
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
                assert top in stdlib or top == "__future__", f"{path.name} imports {name}"


def test_protocol_never_reads_a_clock() -> None:
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in FORBIDDEN_CALLS, (
                    f"{path.name}:{node.lineno} calls .{node.func.attr}()"
                )
