"""Run every benchmark, write bench/results.json and the results table in bench/README.md.

    python -m bench              # all benchmarks
    python -m bench coldstart    # only bench_coldstart.py
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, kernel {m['kernel']}.",
        "",
        "| benchmark | value | unit | baseline | baseline value | ratio | how |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for suite, rows in results["suites"].items():
        if isinstance(rows, dict) and "error" in rows:
            lines.append(f"| {suite} | failed | | | | | {rows['error']} |")
            continue
        for r in rows:
            lines.append(
                f"| {r['name']} | {_fmt(r['value'])} | {r['unit']} | {r.get('baseline_name') or ''} | "
                f"{_fmt(r.get('baseline_value'))} | {_fmt(r.get('ratio'))} | {r.get('notes', '')} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent))
    wanted = set(argv)
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    names = [n for n in names if not wanted or n.removeprefix("bench_") in wanted]
    out_path = HERE / "results.json"
    previous = json.loads(out_path.read_text()) if out_path.exists() and wanted else {"suites": {}}
    results: dict[str, Any] = {"machine": machine(), "suites": dict(previous.get("suites", {}))}
    failed = False
    for name in names:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            rows = importlib.import_module(f"bench.{name}").run()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            results["suites"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
            continue
        results["suites"][name] = rows
        for r in rows:
            print(f"   {r['name']}: {_fmt(r['value'])} {r['unit']}"
                  + (f" (x{_fmt(r['ratio'])} of {r['baseline_name']})" if r.get("ratio") is not None else ""))
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
