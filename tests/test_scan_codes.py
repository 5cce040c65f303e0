"""Parsing parcel labels: hand-made cases, biip's own test vectors, and hostile text.

The corpus vectors (../shared/corpus/gs1/biip-expected.jsonl) are biip's test suite:
inputs with biip's expected parse. Our parser is stricter and narrower than
``biip.parse`` (it must give one canonical code, never guess), so each vector is
mapped to what *we* promise for it, by the biip test it came from:

- GS1 element strings are fed as a scanner delivers them, behind ``]C1`` (and
  behind a bare leading GS, the FNC1 some scanners send instead);
- Digital Link URIs bare, behind ``]Q1`` (plain QR, how they are printed) and ``]Q3``;
- HRI strings bare;
- whatever biip rejects, or accepts only with a non-default configuration (dates not
  verified, ``|`` as separator), must be rejected by us when declared GS1;
- a wrong nested check digit, which biip records and does not raise, must raise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from firmware_agent.contract.errors import ContractError
from firmware_agent.contract.parcels import (
    MAX_PLAIN_CHARS,
    MAX_SCAN_BYTES,
    CodeKind,
    ParcelCode,
    ScanParseError,
    canonical_code,
    parse_scan,
)
from firmware_agent.scan.cli import register
from simulator.labels import GarbageKind, LabelStyle, garbage_text, random_sscc, scanner_text
from tests.corpus import CORPUS, require

BIIP_EXPECTED = CORPUS / "gs1" / "biip-expected.jsonl"

SSCC = "106141412345678908"  # GS1's own example SSCC, check digit 8
GS = "\x1d"
REASONS = {
    "not_text",
    "too_long",
    "empty",
    "control_chars",
    "not_printable",
    "bad_check_digit",
    "bad_gs1",
}


# --- hand-made cases ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"]C100{SSCC}",
        f"]C100{SSCC}\r\n",
        f"  ]C100{SSCC}",
        f"00{SSCC}",
        SSCC,
        f"(00){SSCC}",
        f"{GS}00{SSCC}",
        f"]d200{SSCC}",
        f"]Q300{SSCC}",
        f"]e000{SSCC}",
        f"]C000{SSCC}",  # an SSCC label wrongly printed as plain Code 128
        f"]Q1https://id.gs1.org/00/{SSCC}",
        f"https://id.gs1.org/00/{SSCC}",
        f"HTTPS://ID.GS1.ORG/00/{SSCC}",  # QR alphanumeric mode: upper case only
    ],
)
def test_every_form_of_an_sscc_gives_the_18_digits(raw: str) -> None:
    code = parse_scan(raw)
    assert code.kind is CodeKind.SSCC
    assert code.code == SSCC
    assert code.hri == f"(00){SSCC}"
    assert code.raw == raw


def test_an_sscc_label_with_gs_separated_extras() -> None:
    raw = f"]C100{SSCC}{GS}4201234{GS}0109506000134352"
    code = parse_scan(raw)
    assert code == ParcelCode(
        raw=raw,
        symbology="]C1",
        kind=CodeKind.SSCC,
        code=SSCC,
        gtin="09506000134352",
        ship_to_postcode="1234",
        hri=f"(00){SSCC}(420)1234(01)09506000134352",
    )


def test_ship_to_postcode_with_country_drops_the_iso_code() -> None:
    code = parse_scan(f"]C100{SSCC}{GS}421276803369")
    assert code.ship_to_postcode == "803369"  # 276 = Germany


def test_gs1_without_sscc_is_matched_by_its_hri_in_ai_order() -> None:
    code = parse_scan(f"]d201095060001343522112345{GS}10ABC")
    assert code.kind is CodeKind.GS1
    assert code.hri == "(01)09506000134352(21)12345(10)ABC"  # as on the label
    assert code.code == "(01)09506000134352(10)ABC(21)12345"
    assert code.gtin == "09506000134352"
    assert code.symbology == "]d2"
    # The same data as a Digital Link (qualifiers in the path) is the same parcel.
    link = parse_scan("]Q1https://id.gs1.org/01/09506000134352/10/ABC/21/12345")
    assert link.code == code.code
    assert canonical_code("(01)09506000134352(21)12345(10)ABC") == code.code


@pytest.mark.parametrize(
    ("raw", "symbology", "code"),
    [
        ("JD0146000062812", None, "JD0146000062812"),
        ("]C0JD0146000062812", "]C0", "JD0146000062812"),
        ("]Q1  1Z999AA10123456784 ", "]Q1", "1Z999AA10123456784"),
        ("]d1Paket-Nr. 12/34 äöü", "]d1", "Paket-Nr. 12/34 äöü"),
        ("https://nolp.dhl.de/nextt-online-public/set_identcodes.do?idc=1", None, None),
        ("0107032069804988", None, None),  # 16 digits: not guessed to be GS1
        ("5901234123457", None, None),
        ("]E05901234123457", "]E0", "5901234123457"),
        ("]", None, "]"),
        ("]A", None, "]A"),
        ("x" * MAX_PLAIN_CHARS, None, None),
    ],
)
def test_plain_codes_are_their_text(raw: str, symbology: str | None, code: str | None) -> None:
    parsed = parse_scan(raw)
    assert parsed.kind is CodeKind.PLAIN
    assert parsed.symbology == symbology
    assert parsed.code == (code if code is not None else raw.strip())
    assert parsed.gtin is parsed.hri is parsed.ship_to_postcode is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        (" \r\n", "empty"),
        ("]C1", "empty"),
        ("]C0   ", "empty"),
        (f"]C100{SSCC[:-1]}9", "bad_check_digit"),
        (f"00{SSCC[:-1]}9", "bad_check_digit"),
        (f"{SSCC[:-1]}9", "bad_check_digit"),
        (f"(00){SSCC[:-1]}9", "bad_check_digit"),
        (f"https://id.gs1.org/00/{SSCC[:-1]}9", "bad_check_digit"),
        ("]C10109506000134353", "bad_check_digit"),  # GTIN check digit 2
        ("]C1hello", "bad_gs1"),
        (f"]C100{SSCC}{GS}99", "bad_gs1"),
        (f"ABC{GS}DEF", "bad_gs1"),  # GS makes it GS1 or nothing
        (f"]C100{SSCC}\x1e", "control_chars"),
        ("]C1" + "0" * 20 + "\x1f", "control_chars"),
        ("ABC\x04", "control_chars"),
        ("AB\x00C", "control_chars"),
        ("AB\u200bC", "not_printable"),
        ("AB\u00a0C", "not_printable"),
        ("x" * (MAX_PLAIN_CHARS + 1), "too_long"),
        ("]C1" + "1" * MAX_SCAN_BYTES, "too_long"),
        ("é" * (MAX_SCAN_BYTES // 2 + 1), "too_long"),  # bytes, not characters
        ("AB\ufffdC", "not_text"),
        ("AB" + chr(0xD800) + "C", "not_text"),  # a lone surrogate
        (f"]C100{SSCC[:8]}٣٣٣٣٣٣٣٣٣٣", "bad_gs1"),  # Arabic-Indic digits are not GS1
    ],
)
def test_unusable_scans_are_errors_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ScanParseError) as info:
        parse_scan(raw)
    assert info.value.reason == reason
    assert str(info.value)


def test_scan_parse_error_is_both_a_contract_error_and_a_value_error() -> None:
    with pytest.raises(ContractError):
        parse_scan("")
    with pytest.raises(ValueError, match="empty"):
        parse_scan("")


def test_non_text_is_rejected_not_crashed_on() -> None:
    with pytest.raises(ScanParseError) as info:
        parse_scan(b"]C1001061414123456789")  # type: ignore[arg-type]
    assert info.value.reason == "not_text"


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        (f"(00){SSCC}", SSCC),
        (f"00{SSCC}", SSCC),
        (f" {SSCC} ", SSCC),
        (f"(00) {SSCC}", SSCC),
        ("JD0146000062812", "JD0146000062812"),
        ("  JD0146000062812\t", "JD0146000062812"),
        ("(01)09506000134352(21)12345", "(01)09506000134352(21)12345"),
        ("(21)12345(01)09506000134352", "(01)09506000134352(21)12345"),
        ("]C0ABC", "]C0ABC"),  # manifests hold payloads: a leading ] is text
        (f"{SSCC[:-1]}9", f"{SSCC[:-1]}9"),  # unmatchable, but kept: no crash
        ("x" * 100, "x" * 100),
    ],
)
def test_canonical_code_of_manifest_entries(entry: str, canonical: str) -> None:
    assert canonical_code(entry) == canonical


def test_canonical_code_rejects_an_empty_entry() -> None:
    with pytest.raises(ScanParseError) as info:
        canonical_code("  ")
    assert info.value.reason == "empty"


def test_the_contract_example_scan_matches_the_contract_example_manifest() -> None:
    # A manifest may list an SSCC with its "00" AI (docs/manifest.schema.json); the scan
    # log example of docs/scan-log.md carries it as GS1-128 with a ship-to postcode.
    assert parse_scan("]C100106141412345678908\u001d4201234").code == canonical_code(
        "00106141412345678908"
    )


# --- hostile text ---------------------------------------------------------------------

_PREFIXES = st.sampled_from(
    [
        *["", "]C1", "]d2", "]Q3", "]e0", "]C0", "]Q1", "]E0", "]Y", "]", "(", "(00)", "00", GS],
        *["https://id.gs1.org/00/", "HTTP://X/01/", "https://id.gs1.org/01/0950600013435/21/"],
    ]
)
_GS1ISH = st.text(st.sampled_from([*"0123456789()/?=&%]. ABCabc~|", GS, "\r", "٣", "⁰"]))


@given(prefix=_PREFIXES, body=_GS1ISH | st.text())
@example(prefix="]C1", body="\x1f")
@example(prefix="]C0", body="]A00")
@example(prefix="]Y", body="")
@example(prefix="]Y9", body="")
def test_parse_scan_only_ever_raises_scan_parse_error(prefix: str, body: str) -> None:
    raw = prefix + body
    try:
        code: ParcelCode | None = parse_scan(raw)
    except ScanParseError as err:
        code, reason = None, err.reason
    if code is None:
        assert reason in REASONS
        return
    # Whatever is accepted is matchable: the manifest form of its code is itself.
    assert code.code
    assert canonical_code(code.code) == code.code
    assert code.raw == raw
    if code.kind is CodeKind.SSCC:
        assert len(code.code) == 18
        assert code.code.isascii()
        assert code.code.isdigit()
    if code.kind is not CodeKind.PLAIN:
        assert code.code.isascii()


@given(st.text())
def test_canonical_code_only_raises_for_empty_entries(entry: str) -> None:
    reason = None
    try:
        canonical_code(entry)
    except ScanParseError as err:
        reason = err.reason
    assert reason == ("empty" if not entry.strip() else None)


# --- biip's test vectors ----------------------------------------------------------------


@dataclass
class Expect:
    """What we promise for one input."""

    inputs: list[str]
    reject: str | None = None  # a reason, or "any"
    not_gs1: bool = False  # a plain code, or rejected: never read as GS1
    symbology: str | None = None
    kind: CodeKind | None = None
    code: str | None = None
    hri: str | None = None
    gtin: str | None = None
    same_hri_as: str | None = None
    elements: list[dict[str, Any]] = field(default_factory=list)


def _module_and_function(test_id: str) -> tuple[str, str]:
    path, rest = test_id.split("::", 1)
    return path.rsplit("/", 1)[-1], rest.split("[", 1)[0]


def _nested_check_digit_failure(elements: list[dict[str, Any]]) -> bool:
    # biip's expected element lists name "sscc"/"gtin" only when the check digit held.
    return any(
        (e["ai"] == "00" and "sscc" not in e) or (e["ai"] == "01" and "gtin" not in e)
        for e in elements
    )


def _accept_elements(inputs: list[str], expected: dict[str, Any]) -> Expect:
    elements = expected.get("element_strings", [])
    if _nested_check_digit_failure(elements):
        return Expect(inputs, reject="bad_check_digit")
    hri = expected.get("hri") or "".join(f"({e['ai']}){e['value']}" for e in elements) or None
    return Expect(inputs, hri=hri, elements=elements)


def _expect(vector: dict[str, Any]) -> Expect:
    module, function = _module_and_function(vector["test"])
    raw: str = vector["input"]
    expected: Any = vector.get("expected")
    failure = bool(vector.get("expect_failure"))
    non_default_config = "config" in vector or vector.get("separator_chars", [GS]) != [GS]

    if module == "test_gs1_digital_link_uris.py":
        if failure or non_default_config:
            return Expect(["]Q3" + raw], reject="bad_gs1")
        if function == "test_as_gs1_message":
            return Expect([raw, "]Q1" + raw, "]Q3" + raw], hri=expected)
        return _accept_elements([raw, "]Q1" + raw, "]Q3" + raw], expected)

    if module in ("test_gs1_element_strings.py", "test_gs1_messages.py"):
        if function.startswith("test_parse_hri_fails"):
            return Expect([raw], not_gs1=True)
        if function == "test_parse_hri":
            return _accept_elements([raw], expected)
        if failure or non_default_config:
            return Expect(["]C1" + raw], reject="bad_gs1")
        if function == "test_extract_with_nested_error":
            return Expect(["]C1" + raw], reject="bad_check_digit")
        inputs = ["]C1" + raw, GS + raw]
        if function == "test_as_gs1_digital_link_uri":
            return Expect(inputs, same_hri_as=expected)
        if "expected_hri" in vector:
            return Expect(inputs, hri=vector["expected_hri"])
        if isinstance(expected, str):
            return Expect(inputs, hri=expected)
        if isinstance(expected, dict) and "element_strings" in expected:
            return _accept_elements(inputs, expected)
        return Expect(inputs, kind=CodeKind.GS1)  # dates, measures: valid, no HRI given

    if module == "test_parse.py" and isinstance(expected, dict):
        symbology = expected.get("symbology_identifier")
        if symbology is not None and "element_strings" not in expected:
            # EAN/UPC/ITF: not parcel labels; a plain code without the AIM prefix.
            return Expect(
                [raw], symbology=symbology, kind=CodeKind.PLAIN, code=raw[len(symbology) :]
            )
        if symbology is not None:
            e = _accept_elements([raw], expected)
            e.symbology, e.gtin = symbology, expected.get("gtin")
            return e
        if "digital_link" in expected:
            e = _accept_elements([raw, "]Q1" + raw], expected)
            e.gtin = expected["gtin"]
            return e
        if "sscc" in expected:
            return Expect([raw, "]C100" + raw[-18:]], kind=CodeKind.SSCC, code=expected["sscc"])
        if "element_strings" in expected:
            # biip's top-level "gtin" here is the whole input read as a GTIN/UPC; ours
            # comes from AI 01 only, which the element check covers.
            return _accept_elements(["]C1" + raw], expected)
        return Expect(["]C1" + raw], reject="bad_gs1")

    if module == "test_sscc.py":
        if function == "test_as_hri":
            return Expect([raw, "]C100" + raw], kind=CodeKind.SSCC, code=raw)
        return Expect([raw], not_gs1=True)

    if module == "test_symbology.py" and isinstance(expected, dict):
        symbology = expected["symbology_identifier"]
        if expected["gs1_symbology"] == "GS1Symbology.GS1_128":
            return Expect([raw], reject="bad_gs1")
        return Expect([raw], symbology=symbology, kind=CodeKind.PLAIN, code=raw[len(symbology) :])

    # A kind of vector this mapping does not know yet: hold it to the one promise
    # that has no exception, robustness.
    return Expect([raw, "]C1" + raw, "]Q3" + raw, "]Q1" + raw], reject=None, not_gs1=False)


@cache
def _vectors() -> list[dict[str, Any]]:
    with require(BIIP_EXPECTED).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check(expect: Expect, raw: str) -> None:
    if expect.reject is not None:
        with pytest.raises(ScanParseError) as info:
            parse_scan(raw)
        assert expect.reject in ("any", info.value.reason), str(info.value)
        return
    if expect.not_gs1:
        with contextlib.suppress(ScanParseError):
            assert parse_scan(raw).kind is CodeKind.PLAIN
        return
    try:
        code = parse_scan(raw)
    except ScanParseError as err:
        if expect == Expect(expect.inputs):  # unknown vector kind: rejecting is fine
            return
        raise AssertionError(f"{raw!r} rejected: {err.reason}: {err}") from err
    if expect.kind is not None:
        assert code.kind is expect.kind
    if expect.symbology is not None:
        assert code.symbology == expect.symbology
    if expect.code is not None:
        assert code.code == expect.code
    if expect.hri is not None:
        assert code.hri == expect.hri
    if expect.same_hri_as is not None:
        # The same data as element strings and as a Digital Link: one canonical code.
        assert code.code == parse_scan(expect.same_hri_as).code
    if expect.gtin is not None:
        assert code.gtin == expect.gtin
    for element in expect.elements:
        if element["ai"] == "00":
            assert code.kind is CodeKind.SSCC
            assert code.code == element["sscc"]
        if element["ai"] == "01":
            assert code.gtin == element["gtin"]
    if code.kind is CodeKind.GS1:
        assert code.hri is not None
        assert sorted(code.code.split("(")) == sorted(code.hri.split("("))
    if expect.elements and not any(e["ai"] == "00" for e in expect.elements):
        assert code.kind is CodeKind.GS1


@pytest.mark.corpus
def test_biip_vectors() -> None:
    vectors = _vectors()
    assert len(vectors) > 100
    checked = 0
    for vector in vectors:
        expect = _expect(vector)
        for raw in expect.inputs:
            try:
                _check(expect, raw)
            except AssertionError as err:
                raise AssertionError(f"{vector['test']}: input {raw!r}: {err}") from err
            checked += 1
    assert checked >= len(vectors)


@pytest.mark.corpus
def test_biip_vectors_cover_sscc_gtin_digital_link_and_errors() -> None:
    # Guards the mapping above against silently turning every vector into a no-op.
    expects = [_expect(v) for v in _vectors()]
    assert sum(e.reject == "bad_check_digit" for e in expects) >= 4
    assert sum(e.reject == "bad_gs1" for e in expects) >= 15
    assert sum(bool(e.hri) for e in expects) >= 20
    assert sum(any(x["ai"] == "00" for x in e.elements) for e in expects) >= 2
    assert sum(any(x["ai"] == "01" for x in e.elements) for e in expects) >= 8
    assert sum(any(i.startswith("https://") for i in e.inputs) for e in expects) >= 8


# --- the simulator's labels ----------------------------------------------------------


@pytest.mark.parametrize("style", list(LabelStyle))
@pytest.mark.parametrize("postcode", [None, "80331"])
def test_every_label_the_simulator_prints_parses_to_its_manifest_code(
    style: LabelStyle, postcode: str | None
) -> None:
    # The simulator renders labels from canonical codes without our parser (it checks
    # itself with biip); both sides must agree, or replays would record nothing.
    rng = random.Random(f"{style}{postcode}")
    for _ in range(20):
        sscc = random_sscc(rng)
        code = sscc if style not in (LabelStyle.CODE128, LabelStyle.BARE) else "JD0146000062812"
        if style is LabelStyle.GS1_128_POSTCODE and postcode is None:
            continue
        parsed = parse_scan(scanner_text(code, style, postcode=postcode))
        assert parsed.code == canonical_code(code) == code
        if postcode is not None and style is not LabelStyle.GS1_128:
            assert parsed.ship_to_postcode == (postcode if parsed.kind is CodeKind.SSCC else None)


@pytest.mark.parametrize("kind", [GarbageKind.BAD_CHECK, GarbageKind.BINARY])
def test_the_simulators_broken_reads_are_rejected(kind: GarbageKind) -> None:
    rng = random.Random(str(kind))
    for _ in range(50):
        sscc = random_sscc(rng)
        raw, _ = garbage_text(rng, sscc, LabelStyle.GS1_128, kind=kind)
        with pytest.raises(ScanParseError):
            parse_scan(raw)


def test_the_simulators_truncated_sscc_reads_are_rejected() -> None:
    rng = random.Random(7)
    for style in (LabelStyle.GS1_128, LabelStyle.GS1_DATAMATRIX):
        for _ in range(50):
            raw, _ = garbage_text(
                rng, random_sscc(rng), style, postcode="12345", kind=GarbageKind.TRUNCATED
            )
            with pytest.raises(ScanParseError):
                parse_scan(raw)


# --- fleet-agent scan parse ---------------------------------------------------------------


def _scan_parser() -> argparse.ArgumentParser:
    # As firmware_agent/cli.py builds it: our register() on its subparsers.
    parser = argparse.ArgumentParser(prog="fleet-agent")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_parse_prints_one_json_line_per_code(capsys: pytest.CaptureFixture[str]) -> None:
    args = _scan_parser().parse_args(["scan", "parse", f"]C100{SSCC}{GS}4201234", "JD01"])
    assert args.func(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {
            "raw": f"]C100{SSCC}{GS}4201234",
            "symbology": "]C1",
            "kind": "sscc",
            "code": SSCC,
            "gtin": None,
            "ship_to_postcode": "1234",
            "hri": f"(00){SSCC}(420)1234",
        },
        {
            "raw": "JD01",
            "symbology": None,
            "kind": "plain",
            "code": "JD01",
            "gtin": None,
            "ship_to_postcode": None,
            "hri": None,
        },
    ]


def test_cli_parse_fails_if_any_code_fails(capsys: pytest.CaptureFixture[str]) -> None:
    args = _scan_parser().parse_args(["scan", "parse", SSCC, f"{SSCC[:-1]}9"])
    assert args.func(args) == 1
    ok, bad = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert ok["code"] == SSCC
    assert bad["raw"] == f"{SSCC[:-1]}9"
    assert bad["error"] == "bad_check_digit"
    assert "check digit" in bad["message"]


@pytest.mark.parametrize(
    "argv",
    [
        ["scan"],
        ["scan", "parse"],
        ["scan", "watch"],
        ["scan", "watch", "--port", "/dev/x", "--hid", "/dev/input/event0"],
    ],
)
def test_cli_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _scan_parser().parse_args(argv)
    assert info.value.code == 2
