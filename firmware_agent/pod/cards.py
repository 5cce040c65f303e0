"""The printable reason cards the driver scans to give an attempt's outcome.

``fleet-agent cards --out reasons.svg`` writes one A4 page (SVG, true to size in
millimetres) with a card per outcome a card can give (:data:`~firmware_agent.contract.
outcomes.CARD_OUTCOMES`): its name in large type, whether it is a delivery, and a
Code 128 barcode of its code (:func:`~firmware_agent.contract.outcomes.card_code`).
Code 128 because every scanner a van carries reads it, laser and imager alike, where a
QR code needs an imager. The barcodes are python-barcode's; this module lays them out.

Print at 100 % (no "fit to page"): a module is 0.33 mm, the size scanners are sold
for, with the 10-module quiet zones the symbology asks for.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from firmware_agent.contract.outcomes import CARD_OUTCOMES, LABELS, Outcome, card_code, is_delivery

SVG_NS: Final = "http://www.w3.org/2000/svg"
PAGE_W_MM: Final = 210.0
PAGE_H_MM: Final = 297.0
MARGIN_MM: Final = 10.0
CARD_H_MM: Final = 38.0
MODULE_MM: Final = 0.33
BAR_H_MM: Final = 12.0


class CardsError(Exception):
    """The cards cannot be made (python-barcode is not installed)."""


@dataclass(frozen=True, slots=True)
class Card:
    outcome: Outcome
    code: str
    label: str
    delivery: bool


def cards() -> list[Card]:
    """Every reason card, in the order of :data:`CARD_OUTCOMES`."""
    return [
        Card(outcome, card_code(outcome), LABELS[outcome], is_delivery(outcome))
        for outcome in CARD_OUTCOMES
    ]


def _barcode_svg(code: str) -> ET.Element:
    """python-barcode's Code 128 of ``code``, as an SVG element (sizes in mm)."""
    try:
        import barcode  # type: ignore[import-untyped]  # noqa: PLC0415  # no type hints
        from barcode.writer import SVGWriter  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as err:
        raise CardsError(
            f"python-barcode is needed for the reason cards: pip install 'python-barcode' ({err})"
        ) from err
    symbol = barcode.get("code128", code, writer=SVGWriter())
    rendered: bytes = symbol.render(
        {
            "module_width": MODULE_MM,
            "module_height": BAR_H_MM,
            "quiet_zone": 10 * MODULE_MM,
            "font_size": 8,
            "text_distance": 4,
            "compress": False,
        }
    )
    return ET.fromstring(rendered)  # noqa: S314  # our own library's output, not input


def _mm(value: float) -> str:
    return f"{value:.3f}mm"


def render_svg() -> str:
    """The A4 page of reason cards as SVG text."""
    ET.register_namespace("", SVG_NS)
    page = ET.Element(
        f"{{{SVG_NS}}}svg",
        {"version": "1.1", "width": _mm(PAGE_W_MM), "height": _mm(PAGE_H_MM)},
    )
    ET.SubElement(page, f"{{{SVG_NS}}}title").text = "Fleet gateway reason cards"
    ET.SubElement(page, f"{{{SVG_NS}}}rect", {"width": "100%", "height": "100%", "fill": "white"})
    heading = ET.SubElement(
        page,
        f"{{{SVG_NS}}}text",
        {"x": _mm(MARGIN_MM), "y": _mm(MARGIN_MM + 4), "font-family": "sans-serif",
         "font-size": "10pt"},
    )  # fmt: skip
    heading.text = (
        "Reason cards: scan the parcel, then the card (or the card, then the parcel). "
        "Print at 100 %."
    )
    top = MARGIN_MM + 8
    for i, card in enumerate(cards()):
        y = top + i * CARD_H_MM
        group = ET.SubElement(page, f"{{{SVG_NS}}}g", {"id": f"card-{card.outcome}"})
        ET.SubElement(
            group,
            f"{{{SVG_NS}}}rect",
            {"x": _mm(MARGIN_MM), "y": _mm(y), "width": _mm(PAGE_W_MM - 2 * MARGIN_MM),
             "height": _mm(CARD_H_MM - 3), "fill": "none", "stroke": "black",
             "stroke-dasharray": "2,2"},
        )  # fmt: skip
        title = ET.SubElement(
            group,
            f"{{{SVG_NS}}}text",
            {"x": _mm(MARGIN_MM + 4), "y": _mm(y + 8), "font-family": "sans-serif",
             "font-size": "16pt", "font-weight": "bold"},
        )  # fmt: skip
        title.text = card.label.upper()
        note = ET.SubElement(
            group,
            f"{{{SVG_NS}}}text",
            {"x": _mm(PAGE_W_MM - MARGIN_MM - 4), "y": _mm(y + 8), "font-family": "sans-serif",
             "font-size": "10pt", "text-anchor": "end"},
        )  # fmt: skip
        note.text = (
            "delivered: the parcel has left the van"
            if card.delivery
            else "failed attempt: the parcel stays in the van"
        )
        symbol = _barcode_svg(card.code)
        symbol.set("x", _mm(MARGIN_MM + 4))
        symbol.set("y", _mm(y + 10))
        group.append(symbol)
    ET.indent(page)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(page, encoding="unicode") + "\n"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cards`` to the ``fleet-agent`` command line."""
    cmd = subparsers.add_parser(
        "cards", help="write the printable reason cards (SVG, A4) the driver scans"
    )
    cmd.add_argument("--out", required=True, help="the SVG file to write ('-': stdout)")
    cmd.set_defaults(func=_cmd_cards)


def _cmd_cards(args: argparse.Namespace) -> int:
    try:
        svg = render_svg()
    except CardsError as err:
        print(f"fleet-agent cards: {err}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(svg)
        return 0
    try:
        Path(args.out).write_text(svg, encoding="utf-8")
    except OSError as err:
        print(f"fleet-agent cards: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(CARD_OUTCOMES)} reason cards", file=sys.stderr)
    return 0
