"""Properties of the detector: garbage never raises, and earlier boots never change the latest boot's verdict."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation import detect
from remediation.model import Finding, Verdict

SERIAL = Path(__file__).resolve().parents[1] / "data" / "serial"
EXPECTED: dict[str, dict[str, str]] = json.loads((SERIAL / "expected.json").read_text())
LOGS = {name: (SERIAL / name).read_bytes() for name in sorted(EXPECTED)}
NAMES = sorted(LOGS)
# Logs whose latest boot starts with a boot marker: what any earlier boot may be put in front of.
LATEST = [name for name in NAMES if LOGS[name] and not detect.needs_more(LOGS[name])]

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

noise_bytes = st.binary(min_size=0, max_size=64)
console_junk = st.sampled_from(
    [b"\x1b[0;1;31m", b"\x1b[0m", b"\x00", b"\xff\xfe", b"\r", b"\r\n", b"\x1b]0;t\x07", b"\xe2\x82", b"\t", b"[0;32m"]
)


def _check(finding: Finding) -> None:
    assert isinstance(finding.verdict, Verdict)
    for ev in finding.evidence:
        assert ev.line >= 1
        assert "\x1b" not in ev.text and "\x00" not in ev.text
    assert (finding.policy_type is None) == (finding.policy_path is None)


@PROFILE
@given(st.binary(max_size=20000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check(detect.analyze_bytes(data))
    _check(detect.analyze_bytes(data, tail=True))


@PROFILE
@given(st.text(max_size=5000))
def test_random_text_never_raises(text: str) -> None:
    _check(detect.analyze(text))
    assert isinstance(detect.needs_more(text), bool)


@PROFILE
@given(st.sampled_from(NAMES), st.data())
def test_truncated_logs_never_raise(name: str, data: st.DataObject) -> None:
    log = LOGS[name]
    cut = data.draw(st.integers(0, len(log)))
    _check(detect.analyze_bytes(log[:cut]))
    _check(detect.analyze_bytes(log[cut:], tail=True))


@PROFILE
@given(st.sampled_from(NAMES), st.lists(st.tuples(st.floats(0, 1), st.one_of(noise_bytes, console_junk)), max_size=8))
def test_noise_anywhere_never_raises(name: str, insertions: list[tuple[float, bytes]]) -> None:
    log = bytearray(LOGS[name])
    for where, junk in insertions:
        pos = int(where * len(log))
        log[pos:pos] = junk
    _check(detect.analyze_bytes(bytes(log)))


@PROFILE
@given(st.sampled_from(LATEST), st.sampled_from(NAMES), st.sampled_from(NAMES))
def test_earlier_boots_never_change_the_latest_verdict(latest: str, first: str, second: str) -> None:
    """Any earlier boots (failed, frozen, healthy, cut short) in front leave the latest boot's verdict alone."""
    alone = detect.analyze_bytes(LOGS[latest])
    combined = detect.analyze_bytes(LOGS[first] + b"\n" + LOGS[second] + b"\n" + LOGS[latest])
    assert combined.verdict is alone.verdict, (first, second, latest, combined.reason)
    assert combined.signature == alone.signature
    assert combined.policy_type == alone.policy_type
    assert [e.text for e in combined.evidence] == [e.text for e in alone.evidence]


@PROFILE
@given(st.sampled_from(LATEST), st.lists(st.text(min_size=1, max_size=200), max_size=30))
def test_earlier_garbage_lines_never_change_the_latest_verdict(latest: str, lines: list[str]) -> None:
    """Lines of any text before the latest boot (an earlier boot's remains) do not change its verdict."""
    prefix = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    alone = detect.analyze_bytes(LOGS[latest])
    combined = detect.analyze_bytes(prefix + LOGS[latest])
    assert combined.verdict is alone.verdict, combined.reason


@PROFILE
@given(st.sampled_from(LATEST), st.integers(1, 5))
def test_line_ending_style_does_not_change_the_verdict(latest: str, style: int) -> None:
    ending = [b"\n", b"\r\n", b"\r\r\n", b"\n\x00", b"\x00\r\n"][style - 1]
    alone = detect.analyze_bytes(LOGS[latest])
    converted = detect.analyze_bytes(LOGS[latest].replace(b"\r\n", b"\n").replace(b"\n", ending))
    assert converted.verdict is alone.verdict
    assert [e.line for e in converted.evidence] == [e.line for e in alone.evidence]
