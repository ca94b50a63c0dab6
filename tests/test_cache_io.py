"""Every I/O failure of the cache between runs is a miss, never a crash (issue #19): a folder
that cannot be written, a full disk, a corrupt entry, an entry under another key's file name.
The run goes on with its reports and the values of a run without the cache; a failed write
warns once. ``--cache-dir`` naming a file is a usage error (exit 4)."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import TOY_HEADER

from robaudit.diskcache import DiskStore

CHECKS = ("checks:\n  - metric: clean_accuracy\n  - metric: deepfool_min_distortion\n"
          "  - metric: uap_fooling_rate\n    params: {max_passes: 2}\n")


@pytest.fixture
def spec(write_spec, toy_dir):
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).state_dict(),
               toy_dir / "linear.pt")
    return write_spec(TOY_HEADER.replace("toy_model.py:linear\n",
                                         "toy_model.py:linear\n  weights: linear.pt\n") + CHECKS)


def _run(robaudit_main, spec: Path, report: Path, *extra: str | Path):
    """(exit code, stderr, {check id: (value, details)}) of ``run`` with a JSON report."""
    code, out, err = robaudit_main("run", spec, "--json", report, *extra)
    assert "Traceback" not in out + err and "INTERNAL ERROR" not in out + err
    checks = json.loads(report.read_text())["checks"]
    return code, err, {c["id"]: (c["value"], c["details"]) for c in checks}


@pytest.fixture
def fresh(robaudit_main, spec, tmp_path):
    """The values of a run without the cache."""
    code, _, values = _run(robaudit_main, spec, tmp_path / "fresh.json")
    assert code == 0
    return values


def _refuse_writes_under(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only. root ignores permissions, so there the refusal the kernel
    would give (EACCES on creating a file in it) is given by ``mkstemp`` itself."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:
        return
    original = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_read_only_empty_cache_folder_warns_once_and_runs(robaudit_main, spec, tmp_path,
                                                            fresh, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    _refuse_writes_under(cache, monkeypatch)
    try:
        code, err, values = _run(robaudit_main, spec, tmp_path / "r.json", "--cache-dir", cache)
    finally:
        cache.chmod(stat.S_IRWXU)
    assert code == 0 and values == fresh
    # one warning of the disk cache, one of the --lf state (run --lf, issue #24)
    assert err.count("WARNING") == 2 and "PermissionError" in err and str(cache) in err
    assert err.count("could not be stored for --lf") == 1
    assert [p.name for p in cache.iterdir()] == ["lastrun"]  # the --lf state's empty folder
    assert list((cache / "lastrun").iterdir()) == []


def test_a_full_disk_warns_once_leaves_no_temporary_file_and_runs(robaudit_main, spec,
                                                                  tmp_path, fresh,
                                                                  monkeypatch):
    cache = tmp_path / "cache"
    original = torch.save
    attempts = []

    def full(obj, target, *args, **kwargs):
        if Path(target).parent == cache:
            attempts.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    code, err, values = _run(robaudit_main, spec, tmp_path / "r.json", "--cache-dir", cache)
    assert code == 0 and values == fresh
    assert len(attempts) > 1  # several entries failed to be written...
    assert err.count("WARNING") == 1 and "No space left on device" in err  # ...one warning
    # no temporary file left behind; only the --lf state (run --lf, issue #24)
    assert [p.name for p in cache.iterdir()] == ["lastrun"]


def test_corrupt_entries_are_recomputed_and_rewritten(robaudit_main, spec, tmp_path, fresh):
    cache = tmp_path / "cache"
    _run(robaudit_main, spec, tmp_path / "first.json", "--cache-dir", cache)
    entries = sorted(cache.glob("*.pt"))  # the entries, not the --lf state (issue #24)
    assert len(entries) > 1
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:40])  # a truncated write
    code, err, values = _run(robaudit_main, spec, tmp_path / "r.json", "--cache-dir", cache)
    assert code == 0 and values == fresh and "WARNING" not in err
    for entry in entries:
        assert _stored_key(entry)  # rewritten whole


def test_an_entry_under_another_keys_file_name_is_a_miss(tmp_path):
    store = DiskStore(tmp_path, "salt", torch.device("cpu"))
    store.save(("a",), torch.ones(2))
    store.path(("b",)).write_bytes(store.path(("a",)).read_bytes())
    assert store.load(("b",)) == (False, None)
    assert store.load(("a",))[0]
    other_salt = DiskStore(tmp_path, "other salt", torch.device("cpu"))
    other_salt.path(("a",)).write_bytes(store.path(("a",)).read_bytes())
    assert other_salt.load(("a",)) == (False, None)
    assert (store.hits, store.misses, other_salt.misses) == (1, 1, 1)


def test_swapped_entries_give_the_values_of_a_run_without_the_cache(robaudit_main, spec,
                                                                    tmp_path, fresh):
    cache = tmp_path / "cache"
    _run(robaudit_main, spec, tmp_path / "first.json", "--cache-dir", cache)
    entries = sorted(cache.glob("*.pt"))  # the entries, not the --lf state (issue #24)
    keys = [_stored_key(entry) for entry in entries]
    contents = [entry.read_bytes() for entry in entries]
    for entry, content in zip(entries, contents[1:] + contents[:1], strict=True):
        entry.write_bytes(content)  # every entry now under another key's name
    assert [_stored_key(entry) for entry in entries] != keys
    code, _, values = _run(robaudit_main, spec, tmp_path / "r.json", "--cache-dir", cache)
    assert code == 0 and values == fresh
    assert [_stored_key(entry) for entry in entries] == keys  # each recomputed and rewritten


def _stored_key(entry: Path) -> str:
    return torch.load(entry, weights_only=True)["key"]


@pytest.mark.parametrize("inside", [False, True])
def test_a_cache_dir_naming_a_file_is_a_usage_error(robaudit_main, spec, tmp_path, inside):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    target = file / "sub" if inside else file
    code, out, err = robaudit_main("run", spec, "--cache-dir", target)
    assert code == 4, out + err
    assert "Traceback" not in out + err
    assert f"--cache-dir {target}" in err and "expected a folder" in err
    assert file.read_text() == "x"
