"""Parcel codes and scanner renderings, checked against an independent GS1 decoder (biip)."""

from __future__ import annotations

import json
import random
import string

import biip
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.labels import (
    COMPANY_PREFIXES,
    GS,
    GarbageKind,
    LabelStyle,
    draw_label_style,
    garbage_text,
    is_valid_sscc,
    make_sscc,
    random_carrier_code,
    random_sscc,
    raw_bytes,
    scanner_text,
    sscc_check_digit,
    ups_check_digit,
)

GS1_STYLES = (LabelStyle.GS1_128, LabelStyle.GS1_128_POSTCODE, LabelStyle.GS1_DATAMATRIX)


def _biip_sscc(raw: str) -> str | None:
    """The SSCC biip reads from a scanner's text, or None if it reads none."""
    try:
        result = biip.parse(raw)
    except biip.ParseError:
        return None
    if result.gs1_message is None:
        return None
    for element in result.gs1_message.element_strings:
        if element.ai.ai == "00" and element.sscc is not None:
            return element.sscc.value
    return None


@given(st.text(alphabet=string.digits, min_size=17, max_size=17))
def test_check_digit_agrees_with_biip(body: str) -> None:
    code = body + str(sscc_check_digit(body))
    assert is_valid_sscc(code)
    assert _biip_sscc("]C100" + code) == code
    wrong = body + str((sscc_check_digit(body) + 1) % 10)
    assert not is_valid_sscc(wrong)
    assert _biip_sscc("]C100" + wrong) is None
    assert _biip_sscc_error("]C100" + wrong) is not None


def _biip_sscc_error(raw: str) -> str | None:
    """biip's complaint about the SSCC element of ``raw``."""
    message = biip.parse(raw).gs1_message
    assert message is not None
    return next(e.sscc_error for e in message.element_strings if e.ai.ai == "00")


def test_known_examples() -> None:
    # GS1's own SSCC example, and the well-known sample UPS tracking number.
    assert sscc_check_digit("10614141234567890") == 8
    assert ups_check_digit("999AA1012345678") == 4
    made = make_sscc(1, "0614141", 123456789)
    assert made.startswith("10614141123456789")
    assert _biip_sscc("]C100" + made) == made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, "0614141", 1), "extension digit"),
        ((1, "06141", 1), "company prefix"),
        ((1, "0614141", 10**9), "serial reference"),
    ],
)
def test_make_sscc_rejects_bad_parts(args: tuple[int, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_sscc(*args)


def test_check_digit_input_is_checked() -> None:
    with pytest.raises(ValueError, match="17 digits"):
        sscc_check_digit("123")
    with pytest.raises(ValueError, match="digits"):
        sscc_check_digit("1234567890123456x")
    assert not is_valid_sscc("1" * 17)
    assert not is_valid_sscc("x" * 18)


def test_random_codes_look_like_their_kind() -> None:
    rng = random.Random(5)
    for _ in range(300):
        sscc = random_sscc(rng)
        assert is_valid_sscc(sscc)
        assert sscc[1:8] in COMPANY_PREFIXES
        result = biip.parse(sscc)
        assert result.sscc is not None
        assert result.sscc.company_prefix is not None
        assert result.sscc.company_prefix.value == sscc[1:8]
        code = random_carrier_code(rng)
        if code.startswith("JD"):
            assert len(code) == 18
            assert code[2:].isdigit()
        else:
            assert code.startswith("1Z")
            assert len(code) == 18
            assert code.isalnum()
            assert code.isupper() or code[2:].isdigit()
            assert int(code[-1]) == ups_check_digit(code[2:-1])


@pytest.mark.parametrize("style", GS1_STYLES)
def test_gs1_renderings_decode_back_with_biip(style: LabelStyle) -> None:
    rng = random.Random(style.value)
    for _ in range(50):
        code = random_sscc(rng)
        raw = scanner_text(code, style, postcode="80331")
        result = biip.parse(raw)
        assert result.symbology_identifier is not None
        assert result.gs1_message is not None
        assert _biip_sscc(raw) == code
        elements = {e.ai.ai: e.value for e in result.gs1_message.element_strings}
        if style is LabelStyle.GS1_128:
            assert raw.startswith("]C100")
            assert elements == {"00": code}
        else:
            assert elements == {"00": code, "420": "80331"}
        if style is LabelStyle.GS1_128_POSTCODE:
            assert raw == f"]C100{code}{GS}42080331"
        if style is LabelStyle.GS1_DATAMATRIX:
            assert raw == f"]d200{code}42080331"
    plain_matrix = scanner_text("106141412345678908", LabelStyle.GS1_DATAMATRIX)
    assert plain_matrix == "]d200106141412345678908"
    assert _biip_sscc(plain_matrix) == "106141412345678908"


def test_plain_renderings() -> None:
    code = "JD0146000062812345"
    raw = scanner_text(code, LabelStyle.CODE128)
    assert raw == "]C0" + code
    result = biip.parse(raw)
    assert result.symbology_identifier is not None
    assert result.symbology_identifier.iso_symbology == biip.symbology.ISOSymbology.CODE_128
    assert result.symbology_identifier.gs1_symbology is None
    assert scanner_text(code, LabelStyle.BARE) == code


def test_rendering_errors() -> None:
    with pytest.raises(ValueError, match="carry an SSCC"):
        scanner_text("JD0146000062812345", LabelStyle.GS1_128)
    with pytest.raises(ValueError, match="needs a postcode"):
        scanner_text("106141412345678908", LabelStyle.GS1_128_POSTCODE)


def test_label_styles_follow_the_code_kind() -> None:
    rng = random.Random(1)
    sscc_styles = {draw_label_style(rng, "106141412345678908") for _ in range(200)}
    plain_styles = {draw_label_style(rng, "JD0146000062812345") for _ in range(200)}
    assert sscc_styles == set(GS1_STYLES)
    assert plain_styles == {LabelStyle.CODE128, LabelStyle.BARE}


@pytest.mark.parametrize("kind", list(GarbageKind))
def test_garbage_is_never_a_good_read(kind: GarbageKind) -> None:
    rng = random.Random(kind.value)
    for n in range(200):
        if n % 2:
            code = random_sscc(rng)
            style = rng.choice(GS1_STYLES)
        else:
            code = random_carrier_code(rng)
            style = rng.choice((LabelStyle.CODE128, LabelStyle.BARE))
        raw, got = garbage_text(rng, code, style, postcode="80331", kind=kind)
        assert got is kind
        assert raw
        data = raw_bytes(raw)
        assert b"\r" not in data
        assert b"\n" not in data
        # Whatever biip makes of it, it is not a valid SSCC, nor the parcel's own text.
        sscc = _biip_sscc(raw)
        assert sscc is None or sscc != code
        assert raw not in (code, "]C0" + code)
        if kind is GarbageKind.TRUNCATED:
            assert len(raw) < len(scanner_text(code, style, postcode="80331"))
        if kind is GarbageKind.BAD_CHECK:
            assert _biip_sscc_error(raw) is not None
        if kind is GarbageKind.JUNK:
            assert raw.isprintable()
        if kind is GarbageKind.BINARY:
            assert not raw.isprintable()
        # The scan log keeps it in JSON escapes, and the bytes survive the round trip.
        line = json.dumps({"raw": raw})
        assert line.isascii()
        assert raw_bytes(json.loads(line)["raw"]) == data


def test_garbage_kinds_are_drawn_when_not_given() -> None:
    rng = random.Random(3)
    kinds = {garbage_text(rng, "106141412345678908", LabelStyle.GS1_128)[1] for _ in range(200)}
    assert kinds == set(GarbageKind)


def test_non_utf8_bytes_round_trip() -> None:
    data = b"\x00\x1b[\xff\xfe\x80"
    raw = data.decode("utf-8", "surrogateescape")
    assert raw_bytes(raw) == data
    assert raw_bytes("]C100106141412345678908\x1d42080331").endswith(b"\x1d42080331")
    assert raw_bytes("Straße") == "Straße".encode()
