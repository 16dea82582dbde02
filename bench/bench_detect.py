"""Boot-log detector: throughput, bytes read per VM and peak memory on a large generated serial log.

The log is 200 MB of earlier boots (frozen, healthy, failed for other reasons: the corpus logs, cycled)
followed by one frozen latest boot: the shape of a VM that has been rebooting into the same failure for
weeks. `grep -c` for the systemd message on the same file is the baseline: what an operator would do first
(and it answers a different, weaker question: whether the failure appears anywhere, in any boot).

    python bench/bench_detect.py          # prints the rows as JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import median_seconds, row  # noqa: E402
from remediation import detect  # noqa: E402
from remediation.model import Verdict  # noqa: E402

SERIAL = ROOT / "tests" / "data" / "serial"
LOG_MB = 200
FULL_PARSE_MB = 16
RUNS = 5
MB = 1024 * 1024


def _median_seconds(fn: Callable[[], object], runs: int = RUNS) -> float:
    return median_seconds(fn, runs)


def _write_log(path: Path, earlier_mb: int) -> int:
    """Earlier boots from the corpus, cycled to `earlier_mb`, then the genuine frozen Debian boot."""
    names = sorted(p.name for p in SERIAL.glob("*.log") if p.name != "qemu-debian12-frozen.log")
    block = b"".join((SERIAL / n).read_bytes().rstrip(b"\n") + b"\n" for n in names)
    with open(path, "wb") as fh:
        written = 0
        while written < earlier_mb * MB:
            fh.write(block)
            written += len(block)
        fh.write((SERIAL / "qemu-debian12-frozen.log").read_bytes())
    return path.stat().st_size


def _grep_seconds(path: Path) -> float:
    def grep() -> None:
        subprocess.run(["grep", "-c", "Failed to load SELinux policy", str(path)], check=False, capture_output=True)

    return _median_seconds(grep)


def _peak_rss_mb(code: str) -> float:
    """Peak resident memory (VmHWM) of a fresh interpreter running `code`, in MB.

    VmHWM belongs to the new process image; ru_maxrss would carry over the high-water mark of this (large)
    benchmark process across fork and exec.
    """
    probe = "\nprint(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
    out = subprocess.run(
        [sys.executable, "-c", code + probe], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        log = Path(tmp) / "serial.log"
        size = _write_log(log, LOG_MB)
        size_mb = size / MB
        grep_s = _grep_seconds(log)
        grep_mbps = size_mb / grep_s

        finding = detect.analyze_path(log)
        assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE, finding.reason
        tail_s = _median_seconds(lambda: detect.analyze_path(log))
        rows.append(row(
            "detect_tail_path_throughput", round(size_mb / tail_s, 1), "MB/s",
            baseline_name="grep -c (whole file)", baseline_value=round(grep_mbps, 1),
            notes=f"analyze_path on a {size_mb:.0f} MB log (earlier boots + a frozen latest boot), "
            f"median of {RUNS}; {tail_s * 1000:.1f} ms per log against grep's {grep_s * 1000:.0f} ms",
        ))

        with open(log, "rb") as fh:
            tail = detect.read_tail(fh)
        rows.append(row(
            "detect_bytes_read_per_vm", tail.bytes_read, "bytes",
            baseline_name="whole log", baseline_value=size,
            notes="bytes read from the end of the log before judging (DEFAULT_TAIL_BYTES, widened only "
            "when the latest boot's start is not inside)",
        ))

        text = log.read_bytes().decode("utf-8", "replace")
        assert detect.analyze(text).verdict is Verdict.SELINUX_POLICY_FAILURE
        text_s = _median_seconds(lambda: detect.analyze(text))
        rows.append(row(
            "detect_analyze_text_throughput", round(size_mb / text_s, 1), "MB/s",
            baseline_name="grep -c (whole file)", baseline_value=round(grep_mbps, 1),
            notes="analyze() on the whole log already in memory (it also works from the end; line numbers "
            f"are counted over the whole text), median of {RUNS}",
        ))

        # The detector's raw speed when a boot really is long: every line cleaned and matched.
        part = log.read_bytes()[: FULL_PARSE_MB * MB]
        part_path = Path(tmp) / "part.log"
        part_path.write_bytes(part)
        part_grep_mbps = FULL_PARSE_MB / _grep_seconds(part_path)
        part_text = part.decode("utf-8", "replace")

        def full_parse() -> None:
            records = detect._records(part_text)
            detect._judge(records, None)

        full_s = _median_seconds(full_parse, runs=3)
        rows.append(row(
            "detect_full_parse_throughput", round(FULL_PARSE_MB / full_s, 2), "MB/s",
            baseline_name="grep -c (same bytes)", baseline_value=round(part_grep_mbps, 1),
            notes=f"every line of {FULL_PARSE_MB} MB cleaned, split and matched against all "
            f"{len(detect.SIGNATURES)} signatures (no boot cut), median of 3",
        ))

        idle = _peak_rss_mb("import remediation.detect")
        path_peak = _peak_rss_mb(f"from remediation import detect; detect.analyze_path({str(log)!r})")
        pipe_peak = _peak_rss_mb(
            "import subprocess\n"
            "from remediation import detect\n"
            f"p = subprocess.Popen(['cat', {str(log)!r}], stdout=subprocess.PIPE)\n"
            "assert p.stdout is not None\n"
            "detect.analyze_stream(p.stdout); p.wait()"
        )
        rows.append(row(
            "detect_peak_rss_tail_path", round(path_peak, 1), "MB",
            baseline_name="interpreter + detector imported", baseline_value=round(idle, 1),
            notes=f"VmHWM of a fresh process running analyze_path on the {size_mb:.0f} MB log",
        ))
        rows.append(row(
            "detect_peak_rss_stdin_pipe", round(pipe_peak, 1), "MB",
            baseline_name="interpreter + detector imported", baseline_value=round(idle, 1),
            notes=f"the same log streamed through a pipe (not seekable): only a bounded tail is kept "
            f"(cap {detect.MAX_TAIL_BYTES // MB} MiB)",
        ))
    return rows


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
