"""bench/autoattack.py --tiny runs end to end (its figures are in docs/bench/autoattack.md):
every robaudit row, the torchattacks row when torchattacks is installed, accuracies in [0, 1],
AutoAttack never above PGD-20 on the same samples (it starts with an attack at least as
strong)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_tiny_bench_prints_every_row() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "autoattack.py"), "--tiny"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    values = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) == 6 and cells[0] != "measure":
            values[(cells[0], cells[1])] = float(cells[4])
    autoattack = {impl: v for (what, impl), v in values.items() if what.startswith("AutoAttack")}
    assert set(autoattack) >= {"robaudit (standard)", "robaudit (fast)"}
    if importlib.util.find_spec("torchattacks") is not None:
        assert "torchattacks 3.5" in autoattack
    assert all(0 <= v <= 1 for v in autoattack.values())
    pgd = next(v for (what, _), v in values.items() if what.startswith("PGD-20"))
    assert autoattack["robaudit (standard)"] <= pgd
    assert {impl for (what, impl) in values if what.startswith("median")} == {
        "DeepFool (robaudit)", "FMN (robaudit)"}
