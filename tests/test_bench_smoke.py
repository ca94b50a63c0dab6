"""Every script in ``bench/`` runs at a tiny size (issue #23): the README quotes their figures,
so a refactor that breaks one must fail here, not the next time someone regenerates a table.

Each test runs the script as a user would (a subprocess, one thread) with the smallest
options it has, and checks what it wrote: the rows it promises, numbers where numbers go.
A test whose script needs something CI may lack (a peer library, Chromium) skips with the
reason; ``.ci/run`` installs both.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from bench_runner import BENCH, bench

#: imported by the scripts and run through them, not scripts of their own
LIBRARIES = {"floors.py", "provenance.py"}


def test_every_bench_script_has_a_smoke_test() -> None:
    """bench/NAME.py is smoked by ``test_NAME`` in this module or, for the reproductions of the
    papers, in ``test_bench_reproduce_smoke`` (a file of its own, so that the two run on two
    pytest-xdist workers)."""
    import test_bench_reproduce_smoke

    scripts = {path.stem for path in BENCH.glob("*.py")} - {Path(n).stem for n in LIBRARIES}
    tests = {*globals(), *vars(test_bench_reproduce_smoke)}
    missing = sorted(s for s in scripts if f"test_{s}" not in tests)
    assert not missing, f"bench scripts without a smoke test: {missing}"


def test_size(tmp_path: Path) -> None:
    bench("size.py", "--sizes", "8", "16", "--epochs", "0", "--threads", "1",
          "-k", "clean_accuracy or noise_accuracy", "--out", tmp_path)
    figures = json.loads((tmp_path / "size.json").read_text())
    assert [run["n"] for run in figures["runs"]] == [8, 16]
    for run in figures["runs"]:
        assert run["threads"] == 1  # --threads is honoured, not the per-model default
        assert set(run["checks"]) == {"accuracy", "noise"}
        assert all(check["time_s"] > 0 and check["rss_peak_mib"] > 0
                   for check in run["checks"].values())
    table = (tmp_path / "size.md").read_text()
    assert "| `accuracy` |" in table and "| `noise` |" in table


def test_run_default() -> None:
    out = bench("run_default.py", "--threads", "1", "-k", "clean_accuracy or noise_accuracy",
                "--set", "data.limit=32")
    assert re.search(r"accuracy\s+│\s+passed", out) and "noise" in out
    assert "whole audit (set-up included)" in out


def test_cache(tmp_path: Path) -> None:
    out = tmp_path / "cache.md"
    bench("cache.py", "-k", "deepfool_min or clean_accuracy", "--set", "data.limit=32",
          "--out", out)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert any(row.startswith("| deepfool |") for row in rows)
    assert "NO" not in out.read_text()  # the cached run gives identical values and details


def test_threads(tmp_path: Path) -> None:
    """The idle condition only (``--busy 0``): the busy one runs the same audits beside
    core-burning processes, which would slow the rest of the suite too."""
    out = tmp_path / "threads.md"
    bench("threads.py", "--repeats", "1", "--busy", "0", "-k", "clean_accuracy",
          "--large-k", "clean_accuracy", "--n", "8", "--settings", "4", "--out", out,
          timeout=600)  # 3 processes that import torch: a minute on a loaded 2-core machine
    text = out.read_text()
    rows = re.findall(r"^\| robaudit's default threads, passive wait "
                      r"\(picked (\d) idle\) \| (.*) \|$", text, re.MULTILINE)
    assert len(rows) == 2  # one row in each table
    assert rows[0][0] == "1"  # the digits ResNet: one thread
    for _, row in rows:  # 2 figures of seconds, each the best of its column (the only setting)
        cells = row.split(" | ")
        assert all(float(c) > 0 for c in cells[0:4:2]) and set(cells[1:4:2]) == {"1.00×"}
    assert "| idle wall (s) | × best | idle CPU (s) | × best | worst × best |" in text
    assert "busy wall" not in text and "no busy condition" in text
    assert "| 2 threads" not in text and "robaudit's default on this machine" in text


def test_scaleout(tmp_path: Path) -> None:
    out = tmp_path / "scaleout.json"
    bench("scaleout.py", "--procs", "2", "--repeats", "1", "-k",
          "clean_accuracy or deepfool_min_distortion",
          "--set", "data.limit=64", "--out", out)
    figures = json.loads(out.read_text())
    assert {row["check"] for row in figures["checks"]} == {"accuracy", "deepfool"}
    assert figures["summary"]["procs"] == 2 and figures["summary"]["checks_speedup"] > 0


def test_screenshot_report(tmp_path: Path) -> None:
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium on this machine (.ci/run installs it)")
    out = bench("screenshot_report.py", "--out", tmp_path, "--height", "800", "--",
                "-k", "clean_accuracy or noise_accuracy", "--set", "data.limit=32",
                "--threads", "1")
    pngs = [Path(line.strip()) for line in out.splitlines() if line.strip().endswith(".png")]
    assert (tmp_path / "report.png") in pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_peers(tmp_path: Path) -> None:
    for peer in ("art", "torchattacks", "foolbox"):
        if importlib.util.find_spec(peer) is None:
            pytest.skip(f"{peer} is not installed (pip install -e '.[bench]')")
    out = tmp_path / "peers.md"
    bench("peers.py", "--model", "resnet18", "--samples", "4", "--passes", "1", "--art-batch",
          "4", "--repeats", "1", "--size", "4", "--size-epochs", "0", "--out", out)
    bench("peers.py", "--only", "pgd", "--samples", "4", "--out", out)  # the digits ResNet
    text = out.read_text()
    assert "peers on the ResNet-18 at 3×32×32, 4 test samples" in text
    assert "peers on the digits ResNet (shipped weights), 4 test samples" in text
    for row in ("robaudit", "ART 1.20", "foolbox", "torchattacks", "UAP ℓ∞", "PGD ℓ∞"):
        assert row in text
    assert "DeepFool ℓ2 on the ResNet-18 at 3×32×32, 4 test digits" in text
    assert re.search(r"robaudit, the paper's steps +│ +[\d.]+ │ +[\d.]+×", text)


def test_autoattack() -> None:
    """``--tiny``: both models' tables, every robaudit row, the torchattacks row when
    torchattacks is installed, accuracies in [0, 1], AutoAttack never above PGD-20 on the same
    samples (its first attack is at least as strong)."""
    values = {}
    out = bench("autoattack.py", "--tiny")
    assert "plain: digits_resnet.pt" in out and "robust: digits_resnet_pgd.pt" in out
    for line in out.splitlines():
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
        "DeepFool (robaudit)", "FMN, 5 steps (robaudit)"}


def test_startup(tmp_path: Path) -> None:
    out = tmp_path / "startup.md"
    bench("startup.py", "--repeats", "1", "--out", out)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `robaudit")]
    assert [row.split("`")[1] for row in rows] == [
        "robaudit --help", "robaudit metrics", "robaudit metrics clean_accuracy",
        "robaudit validate specs/resnet.yaml"]
    ratios = [float(row.split("|")[3]) for row in rows]
    assert ratios[0] == 1.0 and all(ratio > 0 for ratio in ratios)
    assert rows[0].split("|")[4].strip() == "no"  # --help never imports torch
    floors = [line for line in out.read_text().splitlines() if line.startswith("| `python")]
    assert [row.split("`")[1] for row in floors] == ["python -c pass",
                                                     "python -c 'import pydantic'"]


def test_real_models(tmp_path: Path) -> None:
    """A ResNet-18 at 32×32 over generated image folders of 8 and 16 JPEGs, one check."""
    out = bench("real_models.py", "--model", "resnet18", "--sizes", "8", "16", "--image-size",
                "32", "--source-size", "36", "--batch-size", "8", "-k", "clean_accuracy",
                "--budget", "0.05", "--workers", "0", "--out", tmp_path)
    assert re.search(r"\| `accuracy` \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out), out
    assert re.search(r"Peak RSS of the whole run: \d+ MiB at N = 8, \d+ MiB at N = 16", out)
    runs = json.loads((tmp_path / "real-resnet18.json").read_text())["runs"]
    assert [run["n"] for run in runs] == [8, 16]
    assert all(run["checks"]["accuracy"]["outcome"] in ("passed", "failed") for run in runs)
