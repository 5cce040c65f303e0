"""The printable reason cards: ``fleet-agent cards`` writes barcodes that read back.

Each card's bars are read off the SVG (the rectangles' positions in millimetres, as a
printer places them) and decoded as Code 128 here: start code, symbol values, the
mod-103 check and the stop pattern, to the text a scanner would send. Where zbar and
librsvg are installed, the page is also rasterised at 300 dpi and read by zbarimg.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from barcode.charsets import code128  # type: ignore[import-untyped]

from firmware_agent.cli import main
from firmware_agent.contract.outcomes import CARD_OUTCOMES, card_code, card_outcome
from firmware_agent.contract.parcels import parse_scan
from firmware_agent.pod.cards import MODULE_MM

NS = {"svg": "http://www.w3.org/2000/svg"}


def _mm(value: str) -> float:
    return float(value.removesuffix("mm"))


def modules(symbol: ET.Element) -> str:
    """The barcode's modules (1 bar, 0 space) from its black rectangles."""
    bars = [
        (_mm(r.get("x", "0")), _mm(r.get("width", "0")))
        for r in symbol.iter(f"{{{NS['svg']}}}rect")
        if "black" in (r.get("style") or "")
    ]
    bars.sort()
    start = bars[0][0]
    out: list[str] = []
    for x, width in bars:
        gap = round((x - start) / MODULE_MM) - len(out)
        out += ["0"] * gap + ["1"] * round(width / MODULE_MM)
    return "".join(out)


def decode_code128(bits: str) -> str:
    """Code set B text of a Code 128 module string; AssertionError if it is not one."""
    table = {pattern: value for value, pattern in enumerate(code128.CODES)}
    stop = code128.STOP + "11"  # the stop character and its 2-module termination bar
    assert bits.endswith(stop)
    body = bits[: -len(stop)]
    assert len(body) % 11 == 0
    values = [table[body[i : i + 11]] for i in range(0, len(body), 11)]
    start, *data, check = values
    assert start == code128.START_CODES["B"]
    assert check == (start + sum(i * v for i, v in enumerate(data, start=1))) % 103
    return "".join(chr(v + 32) for v in data)


def test_cards_command_writes_one_readable_card_per_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reasons.svg"
    assert main(["cards", "--out", str(out)]) == 0
    assert f"{len(CARD_OUTCOMES)} reason cards" in capsys.readouterr().err
    page = ET.parse(out).getroot()
    assert (page.get("width"), page.get("height")) == ("210.000mm", "297.000mm")
    groups = page.findall("svg:g", NS)
    assert [g.get("id") for g in groups] == [f"card-{o}" for o in CARD_OUTCOMES]
    for group, outcome in zip(groups, CARD_OUTCOMES, strict=True):
        texts = ["".join(t.itertext()) for t in group.iter(f"{{{NS['svg']}}}text")]
        assert texts[0] == outcome.replace("_", " ").upper().replace(
            "SAFE PLACE", "LEFT IN A SAFE PLACE"
        ).replace("NEIGHBOUR", "LEFT WITH A NEIGHBOUR")
        delivery = outcome in {"safe_place", "neighbour"}
        assert texts[1].startswith("delivered" if delivery else "failed attempt")
        (symbol,) = group.findall("svg:svg", NS)
        text = decode_code128(modules(symbol))
        assert text == card_code(outcome)
        # What the agent makes of it: this outcome's card, never a parcel.
        assert card_outcome(parse_scan("]C0" + text).code) == outcome
        # The card fits on the page.
        assert _mm(symbol.get("x", "0")) + _mm(symbol.get("width", "0")) <= 200.0


def test_cards_to_stdout_and_unwritable_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cards", "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg')
    assert main(["cards", "--out", str(tmp_path / "no" / "such" / "dir.svg")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("zbarimg") is None or shutil.which("rsvg-convert") is None,
    reason="zbar-tools and librsvg2-bin are not installed",
)
def test_a_barcode_reader_reads_every_card_off_the_printed_page(tmp_path: Path) -> None:
    svg, png = tmp_path / "reasons.svg", tmp_path / "reasons.png"
    assert main(["cards", "--out", str(svg)]) == 0
    subprocess.run(["rsvg-convert", "-d", "300", "-p", "300", str(svg), "-o", str(png)], check=True)
    read = subprocess.run(
        ["zbarimg", "-q", str(png)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(read) == sorted(f"CODE-128:{card_code(o)}" for o in CARD_OUTCOMES)
