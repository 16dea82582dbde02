"""The command line: `selinux-remediator` / `python -m remediation`.

Exit status: 0 when the command did its job, 1 when it ran but the outcome is bad (e.g. a demo that did
not heal everything), 2 for a usage error or unreadable input, with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from remediation.model import InvalidInput

EXIT_OK = 0
EXIT_BAD_OUTCOME = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def cmd_scan_log(args: argparse.Namespace) -> int:
    from remediation import detect

    status = EXIT_OK
    for path in args.paths:
        try:
            finding = detect.analyze_stream(sys.stdin.buffer) if path == "-" else detect.analyze_path(path)
        except OSError as exc:
            sys.stderr.write(f"scan-log: cannot read {path}: {exc.strerror or exc}\n")
            status = EXIT_USAGE
            continue
        if args.json:
            _emit({"path": path, **finding.to_dict()})
        else:
            sys.stdout.write(f"{path}: {finding.verdict.value}")
            sys.stdout.write(f" ({finding.reason})\n" if finding.reason else "\n")
            for ev in finding.evidence:
                sys.stdout.write(f"  line {ev.line}: {ev.text}\n")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selinux-remediator", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("scan-log", help="classify the latest boot in serial console logs")
    p.add_argument("paths", nargs="+", metavar="PATH", help="serial log file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.set_defaults(func=cmd_scan_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except InvalidInput as exc:
        sys.stderr.write(f"{parser.prog} {args.command}: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return result
