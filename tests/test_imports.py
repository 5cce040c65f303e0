"""The import rule: what each part of the code may import from the others.

``firmware_agent.contract`` is everything both sides of the wire agree on; it is the only
part of the van's package that ingest imports, and it imports nothing of the van's own.
The simulator drives the contract only (it writes what a van or a receiver would say,
in the contract's terms); the van imports neither ingest nor the simulator. Every import
counts: at module level, inside functions (deferred) and under ``TYPE_CHECKING``, since
each one is a dependency that installing one side would have to satisfy.

Read from the source with :mod:`ast`, so a rule holds whatever is installed, and a
failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "firmware_agent.contract"
# Libraries that talk to the van's hardware or run its model: never needed to encode,
# decode or check a message, so never imported by the contract, ingest or the simulator.
VAN_ONLY_LIBRARIES = frozenset(
    {
        "gpiozero",
        "evdev",
        "serial",
        "serial_asyncio_fast",
        "pynmea2",
        "ai_edge_litert",
        "tflite_runtime",
    }
)
# The van's pure pieces the simulator may drive besides the contract. None: the
# simulator writes NMEA and what a receiver reports by itself (the contract's Fix), and
# the demo runs the van and ingest as the installed commands.
SIMULATOR_MAY_DRIVE: frozenset[str] = frozenset()


def modules(package: str) -> Iterator[tuple[str, Path]]:
    folder = ROOT / package.replace(".", "/")
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            # ``from firmware_agent import agent`` imports the submodule.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(package: str, allowed: object) -> list[str]:
    """One line per offending import statement: its place, what it imports, why not."""
    found: dict[str, str] = {}
    for name, path in modules(package):
        for line, module in imports(name, path):
            reason = allowed(name, module)  # type: ignore[operator]
            where = f"{path.relative_to(ROOT)}:{line}"
            if reason and where not in found:
                found[where] = f"{where}: {module}: {reason}"
    return sorted(found.values())


def _contract_rule(name: str, module: str) -> str | None:
    if within(module, "firmware_agent") and not within(module, CONTRACT):
        # ``from firmware_agent.contract import x`` also yields "firmware_agent.contract";
        # the bare top package is its parent, not the van's code.
        return None if module == "firmware_agent" else "the contract imports only the contract"
    if within(module, "cloud_ingest") or within(module, "simulator"):
        return "the contract imports neither ingest nor the simulator"
    if module.split(".", maxsplit=1)[0] in VAN_ONLY_LIBRARIES:
        return "a van-only library"
    return None


def _ingest_rule(name: str, module: str) -> str | None:
    if within(module, "firmware_agent") and not within(module, CONTRACT):
        return None if module == "firmware_agent" else f"ingest imports only {CONTRACT}"
    if within(module, "simulator"):
        return "ingest does not import the simulator (training reads what it writes)"
    if module.split(".", maxsplit=1)[0] in VAN_ONLY_LIBRARIES:
        return "a van-only library"
    return None


def _simulator_rule(name: str, module: str) -> str | None:
    if within(module, "firmware_agent") and not within(module, CONTRACT):
        if module == "firmware_agent" or any(within(module, m) for m in SIMULATOR_MAY_DRIVE):
            return None
        return f"the simulator imports only {CONTRACT} and {sorted(SIMULATOR_MAY_DRIVE)}"
    if within(module, "cloud_ingest"):
        return "the simulator does not import ingest (the demo runs it as a service)"
    return None


def _van_rule(name: str, module: str) -> str | None:
    if within(name, CONTRACT):
        return None  # its own rule
    if within(module, "cloud_ingest") or within(module, "simulator"):
        return "the van imports neither ingest nor the simulator"
    return None


@pytest.mark.parametrize(
    ("package", "rule"),
    [
        (CONTRACT, _contract_rule),
        ("cloud_ingest", _ingest_rule),
        ("simulator", _simulator_rule),
        ("firmware_agent", _van_rule),
    ],
    ids=["contract", "ingest", "simulator", "van"],
)
def test_import_rule(package: str, rule: object) -> None:
    found = violations(package, rule)
    assert not found, "\n".join(found)


def test_the_van_package_imports_nothing_when_the_contract_is_imported() -> None:
    """Importing ``firmware_agent.contract`` runs ``firmware_agent/__init__.py`` first:
    it must import nothing, or ingest would load the van's code after all."""
    init = ROOT / "firmware_agent" / "__init__.py"
    assert list(imports("firmware_agent", init)) == []
    contract_init = ROOT / "firmware_agent" / "contract" / "__init__.py"
    assert list(imports(CONTRACT, contract_init)) == []


def test_the_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A rule that read only module-level imports would pass what it must refuse."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from firmware_agent.agent import Agent\n"
        "def f():\n"
        "    import simulator.demo\n"
        "    from firmware_agent import gnss\n"
        "    from ..uplink import mqtt\n",
        "utf-8",
    )
    found = [m for _, m in imports("firmware_agent.contract.mod", source)]
    assert "firmware_agent.agent" in found
    assert "simulator.demo" in found
    assert "firmware_agent.gnss" in found
    assert "firmware_agent.uplink.mqtt" in found
    assert _contract_rule("x", "firmware_agent.uplink.mqtt")
    assert _ingest_rule("x", "firmware_agent.gnss")
    assert _ingest_rule("x", "firmware_agent.contract.codec") is None
    assert _simulator_rule("x", "cloud_ingest.worker")
    assert _van_rule("firmware_agent.agent", "simulator.broker")
