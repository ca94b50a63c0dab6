"""``robaudit merge``: the reports of ``run --shard I/N`` → the report one process writes
(design §8).

Each shard report holds its share of every check (per-sample arrays, exactly encoded) and
what identifies the run: the spec file's digest with the command-line overrides, the seed,
the robaudit version, the selected checks and the ``-k`` / ``-m`` expressions that selected
them, the audited data's fingerprint and the model. ``merge`` groups the reports by spec,
refuses a group whose shards differ in any of these (or miss a shard, or repeat one), a shard
whose report contradicts its own record (its seed, data fingerprint or model, or shares for
other checks than it selected), loads the spec (unchanged since the shards ran: its digest
must match, and it must select what the shards say they ran) and judges every check from the
shares, in plan order, with the same code as a single run: the reporters then write what one
process writes. A check whose shares contradict each other or the plan (units outside the
shard's part of the plan, arrays of unequal length, a NaN at a sample that the share's own
``converged`` flag marks converged, fits that differ) is ``error`` with the reason.

Shards are trusted input, as the spec is (design §9): nothing is signed, so ``merge`` checks
that the shards are consistent, not who wrote them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import robaudit
from robaudit.errors import EXIT_NO_CHECKS, UsageError
from robaudit.preparation import AuditPlan
from robaudit.reportfile import read_shard_report
from robaudit.results import AuditResult
from robaudit.selection import keyword_matches, marker_matches
from robaudit.session import Session
from robaudit.sharding import Share, decode_share, spec_digest
from robaudit.spec import AuditSpec, load_spec
from robaudit.wire import WireError, digest

#: what every shard of one run must agree on
AGREE = ("robaudit", "count", "seed", "overrides", "selected", "selection", "spec_sha256",
         "data_fingerprint", "model", "blocked")


def read_shard(path: str) -> dict[str, Any]:
    """A shard report, checked to be one that agrees with itself: its report's seed, data
    fingerprint, model and shard name are those of its record, and it holds a share of each
    check it selected that was not blocked, and of no other."""
    report = read_shard_report(path)
    if report.get("interrupted"):
        raise UsageError(f"merge {path}: this shard was interrupted before it finished; "
                         "run it again")
    shard = report["shard"]
    own = {"seed": (report.get("seed"), shard["seed"]),
           "data.fingerprint": ((report.get("data") or {}).get("fingerprint"),
                                shard["data_fingerprint"]),
           "model": (report.get("model") or {}, shard["model"]),
           "environment.shard": ((report.get("environment") or {}).get("shard"),
                                 f"{shard['index']}/{shard['count']}")}
    for key, (said, recorded) in own.items():
        if said != recorded:
            raise UsageError(f"merge {path}: its `{key}` ({_short(said)}) is not its shard "
                             f"record's ({_short(recorded)}); was the report edited?")
    selected, blocked = shard["selected"], shard["blocked"]
    todo = [cid for cid in selected if cid not in blocked]
    if sorted(shard["shares"]) != sorted(todo) or not set(blocked) <= set(selected):
        raise UsageError(f"merge {path}: its shares ({_short(sorted(shard['shares']))}) and "
                         f"blocked checks ({_short(sorted(blocked))}) are not its `selected` "
                         f"checks ({_short(selected)}); was the report edited?")
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
    _check_plan(spec, group)
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
            owned = [(r, decode_share(r["shard"]["shares"][check.id])) for r in group
                     if check.id in r["shard"]["shares"]]
        except (WireError, KeyError, TypeError, ValueError, RecursionError) as exc:
            raise UsageError(f"merge: the shares of check {check.id!r} cannot be read: "
                             f"{type(exc).__name__}: {exc}") from None
        blocked = plan.blocked.get(check.id) or _contradiction(owned, len(group))
        result.checks.append(session.combine(check, [share for _, share in owned], blocked,
                                             spec.model.seed, data.get("fingerprint")))
    return result, plan


def _check_plan(spec: AuditSpec, group: list[dict[str, Any]]) -> None:
    """Refuse shards whose seed or selection is not what their spec, with their overrides
    and ``-k`` / ``-m``, gives (the selection is not in the spec's digest)."""
    first, shard = group[0], group[0]["shard"]
    if shard["seed"] != spec.model.seed:
        raise UsageError(f"merge {first['path']}: its seed {shard['seed']} is not its spec's "
                         f"({spec.model.seed}, with its overrides); was the report edited?")
    keyword, markexpr = shard["selection"]["keyword"], shard["selection"]["markexpr"]
    selects = [check.id for check in spec.checks
               if (not keyword or keyword_matches(keyword, check.id, check.metric.name))
               and (not markexpr or marker_matches(markexpr, check.tags))]
    if selects != shard["selected"]:
        how = " ".join(f"{flag} {expr!r}" for flag, expr in (("-k", keyword), ("-m", markexpr))
                       if expr) or "(every check)"
        raise UsageError(f"merge {first['path']}: its `selected` checks {_short(shard['selected'])}"
                         f" are not what {first['spec']} selects with {how}: "
                         f"{_short(selects)}; was the report edited?")


def _contradiction(owned: list[tuple[dict[str, Any], Share]], count: int) -> str | None:
    """Why the shares of one check (each with its shard report) contradict each other or the
    plan, or None. Units are the plan's (indices k ≡ shard index mod ``count``, below the
    check's unit count; batch-aligned lengths; every array of a unit as long as the unit);
    a unit's boolean ``converged`` array marks the samples that have values, so a NaN in
    another array at a converged sample contradicts it; the shards fitted one thing."""
    if any(share.error is not None for _, share in owned):
        return None  # the check is error with the share's own message
    if sum(share.result is not None for _, share in owned) > 1:
        return "more than one shard computed this whole check: " + ", ".join(
            str(r["path"]) for r, share in owned if share.result is not None)
    unit_counts = {share.unit_count for _, share in owned}
    if len(unit_counts) > 1:
        return f"the shards disagree on the check's number of units: {sorted(unit_counts)}"
    summaries = {digest(share.fit_summary) for _, share in owned if share.units}
    if len(summaries) > 1:
        return "the shards report different fits (their fit summaries differ)"
    lengths: dict[int, int] = {}
    for report, share in owned:
        index = report["shard"]["index"]
        for unit, result in share.units.items():
            where = f"{report['path']}: unit {unit}"
            if not 0 <= unit < share.unit_count or unit % count != index:
                return (f"{where} is not shard {index}/{count}'s part of the plan "
                        f"(units k ≡ {index} mod {count}, k < {share.unit_count})")
            why, lengths[unit] = _unit_contradiction(result.arrays)
            if why:
                return f"{where}: {why}"
    if lengths:
        last = max(lengths)
        full = {length for unit, length in lengths.items() if unit != last}
        if len(full) > 1 or (full and lengths[last] > min(full)):
            return f"the units' lengths are not the plan's batches: {_short(lengths)}"
    return None


def _unit_contradiction(arrays: dict[str, Any]) -> tuple[str | None, int]:
    """Why a unit's arrays contradict each other (or None), and the unit's length."""
    try:
        values = {name: np.asarray(array, dtype=np.float64) for name, array in arrays.items()}
    except (TypeError, ValueError) as exc:
        return f"an array is not numbers: {exc}", 0
    lengths = {name: (array.shape[0] if array.ndim else -1) for name, array in values.items()}
    if len(set(lengths.values())) > 1 or -1 in lengths.values():
        return f"its arrays have different lengths: {_short(lengths)}", 0
    length = next(iter(lengths.values()), 0)
    flags = values.get("converged")
    if flags is not None:
        if flags.ndim != 1 or not np.isin(flags, (0.0, 1.0)).all():
            return "its `converged` flags are not booleans", length
        marked = flags == 1.0
        for name, array in values.items():
            rows = array[marked].reshape(int(marked.sum()), -1) if marked.any() else array[:0]
            bad = int(np.isnan(rows).any(axis=1).sum()) if rows.size else 0
            if bad:
                return (f"`{name}` is NaN at {bad} samples that its own `converged` flag marks "
                        "converged"), length
    return None, length


def _device(report: dict[str, Any]) -> Any:
    import torch

    return torch.device(str(report.get("device") or "cpu").split(":")[0])

