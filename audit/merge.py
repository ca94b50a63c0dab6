"""``robaudit merge``: the reports of ``run --shard I/N`` → the report one process writes
(design §8).

Each shard report holds its share of every check (per-sample arrays, exactly encoded) and
what identifies the run: the spec file's digest with the command-line overrides, the seed,
the robaudit version, the selected checks, the audited data's fingerprint and the model.
``merge`` groups the reports by spec, refuses a group whose shards differ in any of these (or
miss a shard, or repeat one, or fitted different things), loads the spec (unchanged since the
shards ran: its digest must match) and judges every check from the shares, in plan order, with
the same code as a single run: the reporters then write what one process writes.
"""

from __future__ import annotations

from typing import Any

import robaudit
from robaudit.baseline import read_report
from robaudit.errors import EXIT_NO_CHECKS, UsageError
from robaudit.results import AuditResult
from robaudit.session import AuditPlan, Session
from robaudit.sharding import decode_share, spec_digest
from robaudit.spec import load_spec
from robaudit.wire import WireError

#: what every shard of one run must agree on
AGREE = ("robaudit", "count", "seed", "overrides", "selected", "spec_sha256",
         "data_fingerprint", "model", "blocked")


def read_shard(path: str) -> dict[str, Any]:
    """A shard report, checked to be one."""
    report = read_report(path, "merge")
    shard = report.get("shard")
    if not isinstance(shard, dict) or not all(key in shard for key in (*AGREE, "shares")):
        raise UsageError(f"merge {path}: not a shard report (run the spec with --shard I/N "
                         "--json PATH to write one)")
    if report.get("interrupted"):
        raise UsageError(f"merge {path}: this shard was interrupted before it finished; "
                         "run it again")
    report["path"] = path
    return report


def group_shards(reports: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The reports grouped by spec, in the order given, each group ordered by shard index;
    a usage error for shards that do not belong together."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        groups.setdefault(str(report.get("spec")), []).append(report)
    ordered = []
    for spec, group in groups.items():
        first = group[0]["shard"]
        for report in group[1:]:
            for key in AGREE:
                if report["shard"][key] != first[key]:
                    raise UsageError(
                        f"merge: {group[0]['path']} and {report['path']} are shards of "
                        f"different runs of {spec}: their `{key}` differs "
                        f"({_short(first[key])} vs {_short(report['shard'][key])})")
        if first["robaudit"] != robaudit.__version__:
            raise UsageError(f"merge: the shards of {spec} were written by robaudit "
                             f"{first['robaudit']}, this is {robaudit.__version__}")
        indices = sorted(int(r["shard"]["index"]) for r in group)
        count = int(first["count"])
        if indices != list(range(count)):
            missing = sorted(set(range(count)) - set(indices))
            repeated = sorted({i for i in indices if indices.count(i) > 1})
            raise UsageError(
                f"merge: {spec} needs shards 0..{count - 1} once each; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and repeated else "")
                + (f"repeated {repeated}" if repeated else ""))
        ordered.append(sorted(group, key=lambda r: int(r["shard"]["index"])))
    return ordered


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def merge_shards(session: Session, paths: list[str]) -> tuple[list[AuditResult], int]:
    """Merge the shard reports at ``paths``: judge every check and write the reports."""
    groups = group_shards([read_shard(path) for path in paths])
    merged = [_merge_group(session, group) for group in groups]
    results = [result for result, _ in merged]
    for (result, plan) in merged:
        session.notify("robaudit_audit_start", plan=plan)
        for check in list(result.checks):
            session.notify("robaudit_check_finished", result=check)
    session.write_reports(results)
    if not any(result.checks for result in results):
        return results, EXIT_NO_CHECKS
    return results, session.exit_code(results)


def _merge_group(session: Session, group: list[dict[str, Any]]
                 ) -> tuple[AuditResult, AuditPlan]:
    first, shard = group[0], group[0]["shard"]
    spec = load_spec(first["spec"], session.plugins, shard["overrides"])
    checks = {check.id: check for check in spec.checks}
    missing = [cid for cid in shard["selected"] if cid not in checks]
    if missing:
        raise UsageError(f"merge: {first['spec']} has no check {missing[0]!r} any more")
    plan = AuditPlan(spec, [checks[cid] for cid in shard["selected"]],
                     len(spec.checks) - len(shard["selected"]), _device(first),
                     processes=f"merged from {len(group)} shards")
    if spec_digest(plan, shard["overrides"]) != shard["spec_sha256"]:
        raise UsageError(f"merge: {first['spec']} changed since the shards ran (its digest "
                         "differs from theirs); run the shards again")
    data = first.get("data") or {}
    plan.data_summary = dict(data.get("sizes") or {})
    plan.reference_is_split = bool(data.get("reference_is_split"))
    plan.model_identity, plan.data_identity = first.get("model") or {}, data
    plan.blocked = dict(shard["blocked"])
    environment = {k: v for k, v in (first.get("environment") or {}).items() if k != "shard"}
    environment.update(world_size=1, merged_shards=len(group))
    result = AuditResult(audit=spec.name, spec=str(spec.path), seed=spec.model.seed,
                         device=str(first.get("device")), environment=environment,
                         model=plan.model_identity, data=data,
                         duration_s=max(float(r.get("duration_s") or 0) for r in group))
    for check in plan.checks:
        try:
            shares = [decode_share(r["shard"]["shares"][check.id]) for r in group
                      if check.id in r["shard"]["shares"]]
        except (WireError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"merge: the shares of check {check.id!r} cannot be read: "
                             f"{type(exc).__name__}: {exc}") from None
        result.checks.append(session.combine(check, shares, plan.blocked.get(check.id),
                                             spec.model.seed, data.get("fingerprint")))
    return result, plan


def _device(report: dict[str, Any]) -> Any:
    import torch

    return torch.device(str(report.get("device") or "cpu").split(":")[0])

