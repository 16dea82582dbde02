"""The repair plan as a deterministic Durable Functions orchestrator.

The procedure an operator follows by hand (copy the OS disk, attach it to a rescue VM, fix the
config, swap the disk in, check the boot) written as a generator. Rules that keep it replayable:
no clock but `context.current_utc_datetime`, no I/O, no randomness; every Azure call is an activity
(`remediation.activities`), long operations are started by one activity and polled through durable
timers (the monitor pattern), so no activity blocks for minutes.

Compensation lives here: whatever fails, the orchestrator removes what the incident created and,
once the disk was swapped, swaps the original back. It never deletes anything that existed before
the incident; the original OS disk is kept (tagged) after a successful repair for rollback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from datetime import timedelta
from typing import Any

from remediation import steps

# Durable's RetryOptions is imported lazily so that importing this module stays cheap.
# A throttled or briefly failing ARM call (the SDK retries each request itself first) fails the
# activity; Durable runs it again. Throttling of a busy subscription lasts longer than four quick
# attempts, so the budget is generous: every activity is idempotent.
RETRY_FIRST_INTERVAL_MS = 5_000
RETRY_ATTEMPTS = 8
# A long-running Azure operation that ends in Failed ("internal execution error, retry later") is
# issued again this many times in all before the step counts as failed.
REISSUE_ATTEMPTS = 4

APPROVAL_EVENT = "approval"
# The custom-status steps of a repair that has recorded its outcome and holds no slot any more.
FINAL_STEPS = frozenset({"resolved", "rolled_back", "failed"})


class StepFailed(Exception):
    """A step ended in a way that makes the repair impossible; the message says why."""


class OperationFailed(StepFailed):
    """A long-running operation a step started ended in Failed; issuing it again may succeed."""


class _Plan:
    """Mutable state of one orchestration episode; rebuilt identically on every replay."""

    def __init__(self, context: Any, payload: dict[str, Any]) -> None:
        import azure.durable_functions as df

        self.ctx = context
        self.payload = payload
        self.cfg: dict[str, Any] = payload.get("options") or {}
        self.incident_id: str = payload["incident_id"]
        self.vm_id: str = payload["vm_id"]
        self.retry = df.RetryOptions(RETRY_FIRST_INTERVAL_MS, RETRY_ATTEMPTS)
        self.step = "starting"
        self.history: list[str] = []
        self.seq = 0

    # ---------------------------------------------------------------- plumbing

    def call(self, name: str, **args: Any) -> Any:
        body = {"incident_id": self.incident_id, "vm_id": self.vm_id, **args}
        return self.ctx.call_activity_with_retry(name, self.retry, body)

    def status(self, step: str, message: str) -> None:
        self.step = step
        self.history.append(step)
        self.ctx.set_custom_status(
            {"incident_id": self.incident_id, "vm_id": self.vm_id, "step": step, "message": message,
             "steps_done": list(self.history)}
        )

    def record(self, kind: str, message: str, *, state: str | None = None, reason: str | None = None,
               result: dict[str, Any] | None = None, **data: Any) -> Any:
        """Append to the incident timeline (and move its state); the event id makes a retry a no-op."""
        self.seq += 1
        return self.call(
            steps.RECORD_EVENT,
            event_id=f"{self.seq:04d}",
            at=self.ctx.current_utc_datetime.isoformat(),
            kind=kind,
            message=message,
            data=data,
            state=state,
            reason=reason,
            result=result,
        )

    def wait_ready(self, probes: list[dict[str, Any]], what: str, timeout_s: float) -> Generator[Any, Any, Any]:
        """Poll `check_ready` through durable timers until every probe is done, one failed, or time is up."""
        interval = float(self.cfg.get("poll_interval_seconds", 15))
        deadline = self.ctx.current_utc_datetime + timedelta(seconds=timeout_s)
        while True:
            result = yield self.call(steps.CHECK_READY, probes=probes)
            if result.get("failed"):
                raise OperationFailed(f"{what} failed: {result['failed']}")
            if result.get("done"):
                return result
            if self.ctx.current_utc_datetime >= deadline:
                raise StepFailed(f"{what} did not finish within {timeout_s:.0f} s (still: {result.get('pending')})")
            yield self.ctx.create_timer(self.ctx.current_utc_datetime + timedelta(seconds=interval))

    def ensure(self, name: str, what: str, timeout_s: float, **args: Any) -> Generator[Any, Any, dict[str, Any]]:
        """Start a step and wait for its end state; an operation that ended in Failed is issued again.

        Every start activity is idempotent and looks at the resource first, so calling it again after
        a failed operation re-issues exactly what is missing. A start that had to clear a failed
        resource first says `again`: it is called once more after the probe is satisfied.
        """
        last = ""
        for _ in range(REISSUE_ATTEMPTS):
            r = _ok((yield self.call(name, **args)), what)
            probes = [r["probe"]] if r.get("probe") else []
            try:
                if probes:
                    yield from self.wait_ready(probes, what, timeout_s)
            except OperationFailed as exc:
                last = str(exc)
                continue
            if not r.get("again"):
                return r
        raise StepFailed(f"{what} still failing after {REISSUE_ATTEMPTS} attempts: {last}")


def _ok(result: Any, what: str) -> dict[str, Any]:
    """Activities return {"ok": false, "error": ...} for permanent problems (retrying cannot help)."""
    if not isinstance(result, dict) or not result.get("ok", False):
        error = result.get("error") if isinstance(result, dict) else repr(result)
        raise StepFailed(f"{what}: {error}")
    return result


def repair(context: Any) -> Generator[Any, Any, dict[str, Any]]:
    """The orchestrator body: returns a summary; an expected failure ends in rollback, not a raise."""
    payload = context.get_input() or {}
    plan = _Plan(context, payload)
    timeouts = plan.cfg.get("timeouts_s", {})
    names = steps.resource_names(plan.incident_id, plan.vm_id)
    approval = bool(plan.cfg.get("approval_required") or payload.get("approval_required"))
    original: dict[str, Any] = {}
    touched = False  # anything created or changed: compensation needed on failure
    swapped = False
    outcome: dict[str, Any] = {"incident_id": plan.incident_id, "vm_id": plan.vm_id, "names": names}

    try:
        plan.status("validate", "checking the VM and re-reading its serial log")
        yield plan.record("repair_started", "repair orchestration started", state="repairing",
                          instance_id=context.instance_id)
        target = _ok((yield plan.call(steps.VALIDATE_TARGET)), "validation")
        original = target["original"]
        outcome["original"] = original
        yield plan.record("validated", "VM validated and still broken; original state recorded",
                          original=original)

        plan.status("prepare", "copying the OS disk, creating the rescue VM" + ("" if approval else
                                                                                ", deallocating the VM"))
        starts = [
            plan.call(steps.COPY_OS_DISK, original=original, names=names),
            plan.call(steps.CREATE_RESCUE_VM, original=original, names=names),
        ]
        if not approval:
            starts.append(plan.call(steps.DEALLOCATE_VM))
        touched = True
        results = yield context.task_all(starts)
        for r, what in zip(results, ("disk copy", "rescue VM", "deallocation"), strict=False):
            _ok(r, what)
        try:
            yield from plan.wait_ready([r["probe"] for r in results], "preparation",
                                       timeouts.get("prepare", 1800))
        except OperationFailed:
            # One of the three operations ended in Failed: issue each again (the finished ones are no-ops).
            yield from plan.ensure(steps.COPY_OS_DISK, "disk copy", timeouts.get("prepare", 1800),
                                   original=original, names=names)
            yield from plan.ensure(steps.CREATE_RESCUE_VM, "rescue VM", timeouts.get("prepare", 1800),
                                   original=original, names=names)
            if not approval:
                yield from plan.ensure(steps.DEALLOCATE_VM, "deallocation", timeouts.get("deallocate", 900))
        yield plan.record("prepared", "OS disk copied and rescue VM ready",
                          copy_disk=names["copy_disk"], rescue_vm=names["rescue_vm"])

        plan.status("attach", "attaching the disk copy to the rescue VM")
        yield from plan.ensure(steps.ATTACH_REPAIR_DISK, "attach", timeouts.get("attach", 600), names=names)

        plan.status("repair", "running the repair script on the copy")
        r = _ok((yield plan.call(steps.START_REPAIR_SCRIPT, names=names)), "repair script start")
        yield from plan.wait_ready([r["probe"]], "repair script", timeouts.get("script", 900))
        report = _ok((yield plan.call(steps.REPAIR_RESULT, names=names)), "repair script")["report"]
        outcome["repair"] = report
        yield plan.record("repaired_copy", _describe(report), report=report)
        if report.get("status") != "repaired":
            raise StepFailed(
                "the copy's SELinux configuration is already valid, so the boot failure has another "
                "cause; nothing was changed" if report.get("status") == "already_valid"
                else f"the repair script reported {report.get('status')!r}"
            )

        if approval:
            plan.status("awaiting_approval", "waiting for an operator to approve the disk swap")
            yield plan.record("awaiting_approval", "repair of the copy done; waiting for approval to swap",
                              state="awaiting_approval", changes=report.get("changes"))
            timeout = timedelta(minutes=float(plan.cfg.get("approval_timeout_minutes", 240)))
            timer = context.create_timer(context.current_utc_datetime + timeout)
            event = context.wait_for_external_event(APPROVAL_EVENT)
            winner = yield context.task_any([event, timer])
            if winner is timer:
                raise StepFailed(f"no approval within {timeout}; nothing on the VM was changed")
            timer.cancel()
            decision = winner.result if isinstance(winner.result, dict) else {"approved": bool(winner.result)}
            who = str(decision.get("by") or "an operator")
            if not decision.get("approved"):
                raise StepFailed(f"repair denied by {who}; nothing on the VM was changed")
            yield plan.record("approved", f"disk swap approved by {who}", state="repairing")
            plan.status("deallocate", "deallocating the VM")
            yield from plan.ensure(steps.DEALLOCATE_VM, "deallocation", timeouts.get("deallocate", 900))

        plan.status("detach", "detaching the repaired disk from the rescue VM")
        yield from plan.ensure(steps.DETACH_REPAIR_DISK, "detach", timeouts.get("detach", 600), names=names)

        plan.status("swap", "swapping the repaired disk in as the OS disk")
        swapped = True
        yield from plan.ensure(steps.SWAP_OS_DISK, "disk swap", timeouts.get("swap", 600), names=names,
                               original=original, to="copy")
        yield plan.record("swapped", "the repaired copy is now the OS disk; the original is kept",
                          original_disk=original["os_disk_id"])

        plan.status("start", "starting the VM")
        r = yield from plan.ensure(steps.START_VM, "start", timeouts.get("start", 900))
        mark = int(r.get("serial_offset", 0))

        plan.status("verify", "watching the serial console for a clean boot")
        interval = float(plan.cfg.get("poll_interval_seconds", 15))
        deadline = context.current_utc_datetime + timedelta(minutes=float(plan.cfg.get("verify_timeout_minutes", 15)))
        while True:
            v = _ok((yield plan.call(steps.VERIFY_BOOT, since=mark)), "boot verification")
            if v["verdict"] == "booted":
                outcome["verification"] = v
                break
            if v.get("final"):
                raise StepFailed(f"the repaired disk did not boot: {v['verdict']} ({v.get('reason', '')})")
            if context.current_utc_datetime >= deadline:
                raise StepFailed(f"no clean boot before the verification deadline (last seen: {v['verdict']})")
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=interval))
        yield plan.record("verified", "the VM booted cleanly from the repaired disk",
                          evidence=v.get("evidence"))

        plan.status("cleanup", "removing the rescue VM")
        yield from _cleanup(plan, names, keep_copy=True)
        outcome["state"] = "resolved"
        yield plan.record("resolved", "healed: " + _describe(report), state="resolved",
                          reason="healed: " + _describe(report), result=outcome)
        plan.status("resolved", "healed")
        yield from _hand_on_slot(plan)
        return outcome

    except Exception as exc:  # noqa: BLE001 - every failure ends in compensation, then a clear record
        reason = str(exc) or type(exc).__name__
        outcome["error"] = reason
        failed_step = plan.step
        problems: list[str] = []
        if touched:
            plan.status("rollback", f"rolling back after '{failed_step}': {reason}")
            try:
                yield plan.record("rolling_back", f"step '{failed_step}' failed: {reason}")
                if swapped:
                    yield from plan.ensure(steps.DEALLOCATE_VM, "deallocation for swap back",
                                           timeouts.get("deallocate", 900))
                    yield from plan.ensure(steps.SWAP_OS_DISK, "swap back", timeouts.get("swap", 600),
                                           names=names, original=original, to="original")
                yield from plan.ensure(steps.RESTORE_POWER_STATE, "power restore", timeouts.get("start", 900),
                                       original=original)
                yield from _cleanup(plan, names, keep_copy=False)
            except Exception as cleanup_exc:  # noqa: BLE001 - recorded; the incident says what is left
                problems.append(str(cleanup_exc))
        state = "rolled_back" if swapped else "failed"
        if problems:
            state = "failed"
            reason += "; ROLLBACK INCOMPLETE, check resources tagged " \
                f"{steps.TAG_INCIDENT}={plan.incident_id}: " + "; ".join(problems)
        outcome["state"] = state
        yield plan.record(state, f"step '{failed_step}' failed: {reason}", state=state, reason=reason,
                          result=outcome)
        plan.status(state, reason)
        yield from _hand_on_slot(plan)
        return outcome


def _hand_on_slot(plan: _Plan) -> Generator[Any, Any, None]:
    """This repair's slot under the concurrency cap is free: start the oldest queued repairs now.

    Called once, after the outcome is recorded and without retries; if it fails, the next sweep
    starts them, and this repair's outcome stands.
    """
    with contextlib.suppress(Exception):  # the sweep is the fallback; nothing to undo
        yield plan.ctx.call_activity(steps.START_QUEUED, {"instance_id": plan.ctx.instance_id})


def _describe(report: dict[str, Any]) -> str:
    changes = report.get("changes") or []
    parts = [f"{c.get('key')}: {c.get('old')!r} -> {c.get('new')!r}" for c in changes if isinstance(c, dict)]
    text = f"repair script {report.get('status')}" + (f" ({'; '.join(parts)})" if parts else "")
    if report.get("warnings"):
        text += "; WARNING: " + "; ".join(str(w) for w in report["warnings"])
    return text


def _cleanup(plan: _Plan, names: dict[str, Any], *, keep_copy: bool) -> Generator[Any, Any, None]:
    """Delete what the incident created: rescue VM, then its NIC and disk, and the copy unless in use."""
    # Dependants go only once what holds them is gone (VM -> NIC, disks); a deletion that ended in
    # Failed is issued again by the next round.
    for _ in range(3 + REISSUE_ATTEMPTS):
        r = _ok((yield plan.call(steps.DELETE_RESCUE_RESOURCES, names=names, keep_copy=keep_copy)), "cleanup")
        if not r.get("probes"):
            break
        with contextlib.suppress(OperationFailed):
            yield from plan.wait_ready(r["probes"], "cleanup", 1800)
    yield plan.record("cleaned_up", "rescue resources removed" + ("" if keep_copy else " and the disk copy deleted"))
