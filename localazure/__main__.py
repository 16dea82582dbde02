"""`python -m localazure serve [--scenario FILE] [--port N] [--real-boot] [--faults P] [--seed S]
[--time-scale X] [--state-dir DIR] [--vms N --broken M]`: run the local Azure until interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m localazure", description="A local Azure for the SELinux remediator.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("serve", help="serve ARM, boot diagnostics and Log Analytics over HTTPS on loopback")
    p.add_argument("--scenario", type=Path, help="scenario JSON file (default: the built-in small subscription)")
    p.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    p.add_argument("--real-boot", action="store_true", help="boot OS disks under qemu for genuine serial logs")
    p.add_argument("--faults", help="fault probability (0..1) or a JSON fault plan file")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault plan and the synthetic generator")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every modelled duration (e.g. 0.01)")
    p.add_argument("--state-dir", type=Path, help="where disk images, the CA and endpoint.json go")
    p.add_argument("--vms", type=int, help="serve a synthetic scenario with this many VMs")
    p.add_argument("--broken", type=int, default=0, help="how many synthetic VMs are frozen on SELinux")
    p.add_argument("--no-images", action="store_true", help="declared disk states only (no real images)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument("--no-storage", action="store_true",
                   help="do not start Azurite and the managed-identity endpoint next to the server")
    p = sub.add_parser("durable-host", help="run the local Functions + Durable host (see localazure.durable)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def serve(args: argparse.Namespace) -> int:
    from localazure import scenario as scenario_mod
    from localazure import testing

    if args.port < 0 or args.port > 65535:
        sys.stderr.write(f"serve: --port must be 0..65535, got {args.port}\n")
        return 2
    if args.time_scale <= 0:
        sys.stderr.write(f"serve: --time-scale must be positive, got {args.time_scale}\n")
        return 2
    if args.vms is not None and args.scenario is not None:
        sys.stderr.write("serve: give either --scenario or --vms, not both\n")
        return 2
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="localazure-"))
    try:
        data = (scenario_mod.synthetic(args.vms, args.broken, seed=args.seed) if args.vms is not None
                else scenario_mod.load(args.scenario))
        server = testing.build(data, time_scale=args.time_scale, faults=args.faults, seed=args.seed,
                               state_dir=state_dir, port=args.port, images=False if args.no_images else None,
                               real_boot=True if args.real_boot else None)
    except (ValueError, OSError, RuntimeError) as exc:
        sys.stderr.write(f"serve: {exc}\n")
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
        return 2
    if args.state_dir is None:
        server.owned_dir = state_dir  # a throwaway directory: removed when the server stops
    server.start()
    info: dict[str, Any] = {"endpoint": server.endpoint, "ca": str(server.ca_path),
                            "subscriptions": sorted(server.state.subscriptions),
                            "workspace_id": server.state.workspace_id}
    extras: list[Any] = []
    if not args.no_storage:
        # Azurite for the incident table and a managed identity, so `selinux-remediator ... --local
        # <state-dir>/endpoint.json` runs the product against this server with its usual settings.
        from localazure import azurite
        from localazure.identity import IdentityEndpoint
        from localazure.world import app_settings

        try:
            storage = azurite.start(state_dir / "azurite")
        except RuntimeError as exc:
            server.stop()
            sys.stderr.write(f"serve: {exc} (or pass --no-storage)\n")
            return 2
        identity = IdentityEndpoint().start()
        extras += [storage, identity]
        info["settings"] = app_settings(server, storage, identity)
    (state_dir / "endpoint.json").write_text(json.dumps(info, indent=2) + "\n")
    sys.stdout.write(f"endpoint={server.endpoint}\nca={server.ca_path}\n")
    sys.stdout.write(f"workspace_id={server.state.workspace_id}\nstate_dir={state_dir}\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for extra in extras:
            extra.stop()
        server.stop()
    time.sleep(0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "durable-host":
        from localazure import durable

        return int(durable.main(args.rest))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
