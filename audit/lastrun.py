"""The outcome of each check in the last run of each spec (``run --lf`` / ``--ff``; issue #24),
kept as pytest's cacheprovider keeps ``lastfailed`` in ``.pytest_cache`` (design §4: the
command line follows pytest's; §8: rank 0, or shard 0, records).

The state lives in the cache folder: ``--cache-dir DIR`` when given, else ``.robaudit_cache``
in the working directory (as ``.pytest_cache`` lies in pytest's root folder); one JSON file per
spec, ``lastrun/<sha256 of the spec's resolved path>.json``, holding the spec's path and each
check id's last outcome. A run updates the outcomes of the checks it judged and keeps the
others (a check deselected by ``-k`` keeps its failure), as pytest does.

``--lf`` runs only the selected checks whose last outcome was ``failed`` or ``error`` (of every
spec of the run together), and every selected check when none was; ``--ff`` runs them first in
each spec, then the rest. The state never stops a run: a file that cannot be read is ignored
with a warning, and one that cannot be written is a warning. Files are written whole (a
temporary file renamed), so that a run cut short never leaves half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robaudit.distributed import World
from robaudit.results import OUTCOMES, AuditResult
from robaudit.text import plural

if TYPE_CHECKING:
    from robaudit.preparation import AuditPlan

#: the cache folder when ``--cache-dir`` is not given (relative to the working directory)
DEFAULT_FOLDER = ".robaudit_cache"
#: the last outcomes that ``--lf`` / ``--ff`` rerun
FAILED = ("failed", "error")


def cache_folder(options: argparse.Namespace) -> Path:
    """``--cache-dir``, else ``.robaudit_cache`` in the working directory."""
    return Path(getattr(options, "cache_dir", None) or DEFAULT_FOLDER)


def state_path(folder: Path, spec: Path) -> Path:
    """The state file of ``spec`` in ``folder``."""
    digest = hashlib.sha256(str(Path(spec).resolve()).encode()).hexdigest()[:24]
    return folder / "lastrun" / f"{digest}.json"


def read_outcomes(path: Path, warn: Callable[[str], None]) -> dict[str, str]:
    """Check id → last outcome from ``path``; {} when there is none, and a warning too when it
    cannot be read or is not a state file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warn(f"{path}: the last run's outcomes could not be read ({type(exc).__name__}: "
             f"{exc}); ignored")
        return {}
    outcomes = data.get("outcomes") if isinstance(data, dict) else None
    if not isinstance(outcomes, dict) or not all(
            isinstance(k, str) and v in OUTCOMES for k, v in outcomes.items()):
        warn(f"{path}: not a robaudit state file (expected an object with `outcomes`: check "
             "id → outcome); ignored")
        return {}
    return outcomes


def write_outcomes(path: Path, spec: Path, outcomes: dict[str, str],
                   warn: Callable[[str], None]) -> None:
    """Write ``outcomes`` into ``path`` whole (a temporary file renamed); a failure is a
    warning."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({"spec": str(Path(spec).resolve()), "outcomes": outcomes}, file,
                      indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        warn(f"{path}: the run's outcomes could not be stored for --lf/--ff "
             f"({type(exc).__name__}: {exc})")
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def select(plans: Sequence[AuditPlan], options: argparse.Namespace,
           warn: Callable[[str], None]) -> None:
    """``--lf``: keep only the checks of ``plans`` that failed last time (every check when
    none did); ``--ff``: run them first. Each plan's ``rerun`` says what was done, in the
    words of pytest's ``run-last-failure`` line."""
    last, first = getattr(options, "last_failed", False), getattr(options, "failed_first", False)
    if not (last or first):
        return
    folder = cache_folder(options)
    failed = []
    for plan in plans:
        outcomes = read_outcomes(state_path(folder, plan.spec.path), warn)
        failed.append({c.id for c in plan.checks if outcomes.get(c.id) in FAILED})
    total = sum(len(ids) for ids in failed)
    if total == 0:
        note = "run-last-failure: no previously failed checks, running all"
    elif last:
        skipped = sum(1 for ids, plan in zip(failed, plans, strict=True)
                      if plan.checks and not ids)
        note = f"run-last-failure: rerun previous {plural(total, 'failure')}" + (
            f" (skipped {plural(skipped, 'spec')})" if skipped else "")
    else:
        note = f"run-last-failure: rerun previous {plural(total, 'failure')} first"
    for plan, ids in zip(plans, failed, strict=True):
        plan.rerun = note
        if total == 0:
            continue
        if last:
            plan.deselected += len(plan.checks) - len(ids)
            plan.checks = [c for c in plan.checks if c.id in ids]
        else:
            plan.checks = ([c for c in plan.checks if c.id in ids]
                           + [c for c in plan.checks if c.id not in ids])


def record(results: Iterable[AuditResult], options: argparse.Namespace, world: World,
           warn: Callable[[str], None]) -> None:
    """Store each spec's outcomes after a run (rank 0 of a process group or of shards only).
    In a shard, a check that it did not judge (``skipped``: a placeholder for ``robaudit
    merge``) keeps its earlier outcome."""
    if world.rank != 0:
        return
    folder = cache_folder(options)
    for result in results:
        if not result.checks:
            continue
        path = state_path(folder, Path(result.spec))
        outcomes = read_outcomes(path, lambda _: None)
        outcomes.update({c.id: c.outcome for c in result.checks
                         if not (world.sharded and c.outcome == "skipped")})
        write_outcomes(path, Path(result.spec), outcomes, warn)
