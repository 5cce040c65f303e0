"""Property tests: no byte stream, split anywhere, gets an exception out of the decoder."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_agent.contract.fix import Fix
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from tests.nmea import CYCLE_1, line, lines

GGA = "GPGGA,083723.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,"
RMC = "GPRMC,083723.00,A,5155.55442,N,00434.65873,E,0.211,12.5,210810,,,A"

# Bytes that are not '$', CR or LF can never start or end a sentence.
noise = st.binary(max_size=300).map(
    lambda b: b.replace(b"$", b"").replace(b"\r", b"").replace(b"\n", b"")
)
# NMEA-ish material, so that the decoder's deeper paths are reached, not only framing.
fragments = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([line(b) for b in CYCLE_1]),
        st.sampled_from([b"$GP", b"GGA,", b",,,", b"*", b"*7F", b"\r\n", b"\n", b"$", b"$PUBX"]),
        st.text(alphabet="0123456789.,NSEWAV*$GPRMCGGAVTG\r\n", max_size=60).map(str.encode),
    ),
    max_size=40,
).map(b"".join)


def feed_split(data: bytes, cuts: list[int]) -> list[Fix]:
    decoder = GnssDecoder()
    out: list[Fix] = []
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += decoder.feed(data[prev:cut], now_s=float(cut))
        prev = cut
    out += decoder.feed(data[prev:]) + decoder.flush()
    decoder.summary()
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2000), fragments), cuts=st.lists(st.integers(0, 5000)))
def test_any_bytes_split_anywhere_never_raise(data: bytes, cuts: list[int]) -> None:
    for fix in feed_split(data, cuts):
        # whatever came out respects the Fix invariants
        assert (fix.lat is None) == (fix.lon is None)
        if fix.lat is not None:
            assert -90 <= fix.lat <= 90
            assert -180 <= fix.lon <= 180


@settings(max_examples=300)
@given(before=noise, after=noise, cut=st.integers(0, 1000))
def test_a_valid_epoch_surrounded_by_garbage_is_still_decoded(
    before: bytes, after: bytes, cut: int
) -> None:
    # Garbage before the sentence on its own line, garbage glued after the checksum.
    data = before + b"\r\n" + lines(GGA) + line(RMC, crlf=False) + after + b"\r\n" + before
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    cut %= len(data) + 1
    fixes = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.flush()
    assert len(fixes) == 1
    assert fixes[0].lat is not None
    assert abs(fixes[0].lat - (51 + 55.55442 / 60)) < 1e-9
    assert fixes[0].time is not None  # the RMC's date made it through as well


@settings(max_examples=200)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_glued_before_the_dollar_does_not_hide_the_sentence(garbage: bytes) -> None:
    clean = garbage.replace(b"$", b"").replace(b"\r", b"").replace(b"\n", b"")
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    fixes = decoder.feed(clean + lines(GGA)) + decoder.flush()
    assert len(fixes) == 1
    assert fixes[0].lat is not None
