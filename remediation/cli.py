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

from remediation.model import InvalidInput, RemediationError

EXIT_OK = 0
EXIT_BAD_OUTCOME = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
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


def cmd_handle_alert(args: argparse.Namespace) -> int:
    from remediation import alerts

    if not args.dry_run:
        raise InvalidInput("only --dry-run is supported here: the deployed webhook acts on alerts; "
                           "this command shows what it would do with a payload")
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise InvalidInput(f"cannot read {args.file}: {exc.strerror or exc}") from None
    parsed = alerts.parse_payload(body, max_bytes=args.max_bytes)
    if args.json:
        _emit(parsed.to_dict())
        return EXIT_OK
    sys.stdout.write(f"{parsed.kind}: {len(parsed.targets)} VM target(s)\n")
    if parsed.validation_code:
        sys.stdout.write(f"  subscription validation: would answer validationResponse={parsed.validation_code}\n")
    for vm in parsed.targets:
        sys.stdout.write(f"  target  {vm.id}\n")
    for ign in parsed.ignored:
        sys.stdout.write(f"  ignored {ign.resource}: {ign.reason}\n")
    return EXIT_OK


def _apply_local(args: argparse.Namespace) -> None:
    """--local: point the settings at a running `python -m localazure serve` (its endpoint.json)."""
    if not getattr(args, "local", None):
        return
    import os
    from pathlib import Path

    path = Path(args.local)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"--local: cannot read the local Azure's endpoint file {path}: {exc}") from None
    os.environ.update({k: str(v) for k, v in info.get("settings", {}).items()})


def _store() -> Any:
    from remediation import entrypoints

    return entrypoints.store()


def cmd_incidents(args: argparse.Namespace) -> int:
    from remediation.model import IncidentState, NotFoundError

    _apply_local(args)
    if args.action == "show":
        if not args.incident_id:
            raise InvalidInput("incidents show needs an incident id")
        try:
            incident = _store().get(args.incident_id)
        except NotFoundError:
            raise InvalidInput(f"no incident {args.incident_id!r}") from None
        timeline = _store().timeline(args.incident_id)
        if args.json:
            _emit({**incident.to_dict(), "timeline": [e.to_dict() for e in timeline]})
            return EXIT_OK
        sys.stdout.write(f"{incident.id}  {incident.state.value}  {incident.vm.id}\n")
        if incident.reason:
            sys.stdout.write(f"  reason: {incident.reason}\n")
        for e in timeline:
            sys.stdout.write(f"  {e.at}  {e.kind:<18} {e.message}\n")
        return EXIT_OK
    state = IncidentState(args.state) if args.state else None
    incidents = _store().list(state=state, limit=args.limit)
    for inc in incidents:
        if args.json:
            _emit(inc.to_dict())
        else:
            sys.stdout.write(f"{inc.id}  {inc.state.value:<17} {inc.opened_at}  {inc.vm}  {inc.reason}\n")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from remediation import entrypoints

    _apply_local(args)
    if not args.dry_run:
        raise InvalidInput("starting repairs needs the Function app's durable runtime: run the deployed 'sweep' "
                           "function, or add --dry-run to see what a sweep finds (it records, never repairs)")
    os.environ["REMEDIATION_DRY_RUN"] = "true"
    entrypoints.reset()

    class _NoStarts:
        async def start_repair(self, instance_id: str, payload: dict[str, Any]) -> bool:
            raise AssertionError("a dry-run sweep never starts a repair")

        async def running_repairs(self) -> int:
            return 0

    result = asyncio.run(entrypoints.run_sweep(_NoStarts()))
    if args.json:
        _emit(result)
    else:
        for key, value in result.items():
            if not isinstance(value, list):
                sys.stdout.write(f"{key}: {value}\n")
        for vm in result.get("results", []):
            sys.stdout.write(f"  {vm.get('action', ''):<14} {vm.get('vm_id', '')}  {vm.get('verdict') or ''}  "
                             f"{vm.get('reason') or ''}\n")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("localazure.demo")
    except ImportError:
        raise InvalidInput("the demo needs the project checkout (localazure/ is not deployed)") from None
    return int(demo.main(args))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selinux-remediator", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("scan-log", help="classify the latest boot in serial console logs")
    p.add_argument("paths", nargs="+", metavar="PATH", help="serial log file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.set_defaults(func=cmd_scan_log)

    p = sub.add_parser("handle-alert", help="show what the webhook would do with an alert payload")
    p.add_argument("file", metavar="FILE", help="payload file (JSON), or - for standard input")
    p.add_argument("--dry-run", action="store_true", help="parse and report only (required)")
    p.add_argument("--json", action="store_true", help="one JSON object: targets and ignored")
    p.add_argument("--max-bytes", type=int, default=1_048_576, help="payload size limit (default 1 MiB)")
    p.set_defaults(func=cmd_handle_alert)

    p = sub.add_parser("sweep", help="run the sweep over the subscriptions in scope")
    p.add_argument("--dry-run", action="store_true", help="record and report, never repair")
    p.add_argument("--json", action="store_true")
    p.add_argument("--local", metavar="ENDPOINT_JSON", help="use a running local Azure (its endpoint.json)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("incidents", help="list incidents or show one with its timeline")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("incident_id", nargs="?")
    p.add_argument("--state", choices=[s.value for s in _incident_states()])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--local", metavar="ENDPOINT_JSON", help="use a running local Azure (its endpoint.json)")
    p.set_defaults(func=cmd_incidents)

    p = sub.add_parser("demo", help="heal broken VMs on the local Azure, end to end")
    p.add_argument("--vms", type=int, default=None, help="VMs in the subscription (default: the demo scenario)")
    p.add_argument("--broken", type=int, default=None, help="how many of them are broken")
    p.add_argument("--faults", type=float, default=0.0, help="probability of a transient fault per ARM call")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--real-boot", action="store_true", help="boot the VMs under qemu (slow, genuine consoles)")
    p.add_argument("--json", action="store_true", help="last line: one JSON summary object")
    p.add_argument("--time-scale", type=float, default=None, help="modelled seconds -> real seconds factor")
    p.set_defaults(func=cmd_demo)
    return parser


def _incident_states() -> list[Any]:
    from remediation.model import IncidentState

    return list(IncidentState)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except InvalidInput as exc:  # includes SettingsError: names the setting
        sys.stderr.write(f"{parser.prog} {args.command}: {exc}\n")
        return EXIT_USAGE
    except RemediationError as exc:
        sys.stderr.write(f"{parser.prog} {args.command}: {exc}\n")
        return EXIT_BAD_OUTCOME
    except KeyboardInterrupt:
        return 130
    return result
