"""The files under hw/ and packaging/ an installer uses, checked without the hardware.

- The udev rules parse (udev's own grammar: ``KEY[{attr}] OP "value"``, comma
  separated, with the operators each key allows; systemd 252 has no ``udevadm verify``,
  which came in 254) and, fed the devices a Raspberry Pi really has, give
  ``/dev/fleet/gnss`` to the UART on the header and never to the Bluetooth one, which
  is ``ttyAMA0`` on a Pi 4 unless Bluetooth is moved off it.
- The wiring diagram is well-formed SVG and its pin table says what the agent's
  feedback defaults are.
- The config.txt fragments enable the UART, move Bluetooth off it (Pi 4) and set PPS.
- The packaged agent.toml and ingest.toml are accepted by the real ``config`` commands,
  and the shell scripts parse.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from firmware_agent.settings import FeedbackSettings

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "hw/udev/99-fleet-gateway.rules"
BIN = Path(sys.executable).parent

# udev(7): the match keys, the assignment keys, and keys that are both.
MATCH_KEYS = {
    "ACTION", "DEVPATH", "KERNEL", "KERNELS", "NAME", "SYMLINK", "SUBSYSTEM", "SUBSYSTEMS",
    "DRIVER", "DRIVERS", "ATTR", "ATTRS", "SYSCTL", "ENV", "CONST", "TAG", "TAGS", "TEST",
    "PROGRAM", "RESULT",
}  # fmt: skip
ASSIGN_KEYS = {
    "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV", "TAG",
    "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS",
}  # fmt: skip
KEYS_WITH_ATTR = {"ATTR", "ATTRS", "ENV", "SYSCTL", "TEST", "CONST", "RUN", "IMPORT", "SECLABEL"}
TOKEN = re.compile(r'\s*([A-Z]+)(?:\{([^}]+)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


@dataclass(frozen=True)
class Term:
    key: str
    attr: str | None
    op: str
    value: str


def parse_rules(text: str) -> list[list[Term]]:
    """One list of terms per rule; raises ValueError naming the line on bad syntax."""
    rules: list[list[Term]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        terms: list[Term] = []
        for part in _split_commas(line):
            match = TOKEN.fullmatch(part)
            if match is None:
                raise ValueError(f'line {number}: not KEY OP "value": {part!r}')
            key, attr, op, value = match.groups()
            if key not in MATCH_KEYS | ASSIGN_KEYS:
                raise ValueError(f"line {number}: unknown key {key}")
            if (attr is not None) != (key in KEYS_WITH_ATTR):
                raise ValueError(
                    f"line {number}: {key} {'needs' if attr is None else 'takes no'} {{attr}}"
                )
            if op in ("==", "!=") and key not in MATCH_KEYS:
                raise ValueError(f"line {number}: {key} cannot be matched")
            if op not in ("==", "!=") and key not in ASSIGN_KEYS:
                raise ValueError(f"line {number}: {key} cannot be assigned")
            if key == "MODE" and not re.fullmatch(r"0[0-7]{3}", value):
                raise ValueError(f"line {number}: MODE {value!r}")
            terms.append(Term(key, attr, op, value))
        rules.append(terms)
    return rules


def _split_commas(line: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in line:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if quoted:
        raise ValueError(f"unbalanced quotes: {line!r}")
    parts.append(current)
    return parts


@dataclass
class Device:
    """What udev knows of a device when our rules run (after Raspberry Pi OS's)."""

    subsystem: str
    kernel: str
    kernels: tuple[str, ...] = ()  # the device's and its parents' kernel names
    attrs: dict[str, str] = field(default_factory=dict)  # on the device or a parent
    symlinks: list[str] = field(default_factory=list)
    group: str | None = None
    mode: str | None = None


def _glob(pattern: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def apply_rules(rules: list[list[Term]], device: Device) -> Device:
    """udev's evaluation for the keys our file uses: all matches hold, then assign."""
    for terms in rules:
        if all(_matches(term, device) for term in terms if term.op in ("==", "!=")):
            for term in terms:
                if term.key == "SYMLINK" and term.op == "+=":
                    device.symlinks.append(term.value)
                elif term.key == "GROUP":
                    device.group = term.value
                elif term.key == "MODE":
                    device.mode = term.value
    return device


def _matches(term: Term, device: Device) -> bool:
    if term.key == "SUBSYSTEM":
        hit = _glob(term.value, device.subsystem)
    elif term.key == "KERNEL":
        hit = _glob(term.value, device.kernel)
    elif term.key == "KERNELS":
        hit = any(_glob(term.value, name) for name in (device.kernel, *device.kernels))
    elif term.key == "SYMLINK":
        hit = any(_glob(term.value, name) for name in device.symlinks)
    elif term.key == "ATTRS":
        assert term.attr is not None
        hit = term.attr in device.attrs and _glob(term.value, device.attrs[term.attr])
    else:
        raise AssertionError(f"the test does not evaluate {term.key}")
    return hit if term.op == "==" else not hit


def _gnss(device: Device) -> bool:
    return "fleet/gnss" in apply_rules(parse_rules(RULES.read_text()), device).symlinks


def test_rules_parse() -> None:
    rules = parse_rules(RULES.read_text())
    assert len(rules) >= 8
    names = {t.value for rule in rules for t in rule if t.key == "SYMLINK" and t.op == "+="}
    assert names == {"fleet/gnss", "fleet/scanner", "fleet/scanner-hid"}


@pytest.mark.parametrize(
    "bad",
    [
        'KERNEL=="ttyS0", SYMLINK+="x", MODE="660"',
        'KERNEL=="ttyS0", FOO="x"',
        'ATTRS=="x", SYMLINK+="x"',
        'KERNEL=="ttyS0, SYMLINK+="x"',
        'GROUP=="dialout"',
    ],
)
def test_the_parser_refuses_bad_rules(bad: str) -> None:
    with pytest.raises(ValueError, match=r"line 1|unbalanced"):
        parse_rules(bad)


# What Raspberry Pi OS's 99-com.rules leaves on each UART (serial0: the one on GPIO 14/15,
# serial1: the Bluetooth one), per model and config.txt.
PI4_BT_PL011 = Device("tty", "ttyAMA0", ("fe201000.serial",), symlinks=["serial1"])
PI4_MINI_UART = Device("tty", "ttyS0", ("fe215040.serial",), symlinks=["serial0"])
PI4_DISABLE_BT = Device("tty", "ttyAMA0", ("fe201000.serial",), symlinks=["serial0"])
PI5_DEBUG = Device("tty", "ttyAMA10", ("107d001000.serial",), symlinks=["serial0"])
PI5_UART0 = Device("tty", "ttyAMA0", ("1f00030000.serial",))
UBLOX_USB = Device("tty", "ttyACM0", ("1-1.3",), {"idVendor": "1546", "idProduct": "01a8"})


def test_pi4_bluetooth_uart_is_never_the_receiver() -> None:
    # The bug this file had: KERNEL=="ttyAMA0" named the Bluetooth UART on a Pi 4.
    assert not _gnss(PI4_BT_PL011)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (PI4_MINI_UART, True),  # default config.txt + enable_uart=1: the header's UART
        (PI4_DISABLE_BT, True),  # dtoverlay=disable-bt: the PL011 on the header
        (PI5_DEBUG, False),  # Pi 5's serial0 is the debug connector
        (PI5_UART0, True),  # dtparam=uart0=on
        (UBLOX_USB, True),
        (Device("tty", "ttyUSB0", ("1-1.2",), {"idVendor": "05e0", "idProduct": "1701"}), False),
    ],
)
def test_receiver_name(device: Device, expected: bool) -> None:
    assert _gnss(device) is expected


def test_scanners_and_permissions() -> None:
    rules = parse_rules(RULES.read_text())
    serial = apply_rules(rules, Device("tty", "ttyACM1", attrs={"idVendor": "05e0"}))
    assert serial.symlinks == ["fleet/scanner"]
    assert (serial.group, serial.mode) == ("dialout", "0660")
    hid = apply_rules(rules, Device("input", "event3", attrs={"idVendor": "0c2e"}))
    assert hid.symlinks == ["fleet/scanner-hid"]
    assert (hid.group, hid.mode) == ("input", "0660")
    keyboard = apply_rules(rules, Device("input", "event0", attrs={"idVendor": "046d"}))
    assert keyboard.symlinks == []
    gpio = apply_rules(rules, Device("gpio", "gpiochip0"))
    assert (gpio.group, gpio.mode) == ("gpio", "0660")
    receiver = apply_rules(rules, Device("tty", "ttyAMA0", ("1f00030000.serial",)))
    assert (receiver.group, receiver.mode) == ("dialout", "0660")


def test_wiring_svg_is_well_formed_and_matches_the_feedback_defaults() -> None:
    tree = ET.parse(ROOT / "hw/wiring.svg")
    root = tree.getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    defaults = FeedbackSettings()
    for key in ("green_led", "red_led", "buzzer"):
        assert f"feedback.{key} = {getattr(defaults, key)}" in text
    # BCM 17/27/22 are physical pins 11/13/15; the UART 8/10, PPS (BCM 18) 12.
    for pin in ("pin 11", "pin 13", "pin 15", "pin 8", "pin 10", "pin 12"):
        assert pin in text


def _config_lines(name: str) -> set[str]:
    text = (ROOT / "hw/config" / name).read_text()
    return {line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"}


def test_config_txt_fragments() -> None:
    pi4 = _config_lines("config-pi4.txt")
    assert {"[pi4]", "enable_uart=1", "dtoverlay=disable-bt"} <= pi4
    assert "dtoverlay=pps-gpio,gpiopin=18" in pi4
    pi5 = _config_lines("config-pi5.txt")
    assert {"[pi5]", "dtparam=uart0=on", "dtoverlay=pps-gpio,gpiopin=18"} <= pi5
    assert "dtoverlay=disable-bt" not in pi5
    for lines in (pi4, pi5):
        assert "[all]" in lines  # what follows in config.txt applies to every model again


def test_packaged_configs_are_accepted() -> None:
    agent = subprocess.run(
        [BIN / "fleet-agent", "config", "--config", ROOT / "packaging/fleet-agent/agent.toml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert agent.returncode == 0, agent.stderr
    assert 'port = "/dev/fleet/gnss"' in agent.stdout
    ingest = subprocess.run(
        [BIN / "fleet-ingest", "config", "--config", ROOT / "packaging/fleet-ingest/ingest.toml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "/var/lib/fleet-ingest/ingest.sqlite3" in ingest.stdout


@pytest.mark.parametrize(
    "script",
    [
        "packaging/build-deb.sh",
        "hw/firstboot/firstrun.sh",
        *(
            f"packaging/{p}/{s}"
            for p in ("fleet-agent", "fleet-ingest")
            for s in ("postinst", "prerm", "postrm")
        ),
    ],
)
def test_scripts_parse(script: str) -> None:
    path = ROOT / script
    shell = (
        "bash"
        if path.read_text().startswith("#!/usr/bin/env bash")
        or "bash" in path.read_text().splitlines()[0]
        else "sh"
    )
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    result = subprocess.run(
        [shutil.which(shell) or shell, "-n", path], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
