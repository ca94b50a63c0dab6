"""The cache between runs (``--cache-dir``, issue #13): reused while nothing changed, never
stale (a changed weight, data, seed or version misses), and read back as data only. What the
salt holds in full, and the I/O failures, are in test_cache_keys.py and test_cache_io.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TOY_HEADER

import robaudit
from robaudit.cachekey import model_hash, model_salt, run_salt
from robaudit.context import DataSplit, RunCache
from robaudit.diskcache import DiskStore, NotStorable, decode, encode
from robaudit.ops.deepfool import DeepFoolResult


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))


SPLITS = {"test": DataSplit(torch.rand(8, 1, 4, 4), torch.arange(8) % 2)}


def _salt(net: torch.nn.Module, splits=SPLITS, seed: int = 0) -> str:
    entry = {"factory": "toy:net", "kwargs": {}}
    return run_salt({"model": model_salt(entry, Path("."), net)}, {"source": "toy"}, splits,
                    torch.device("cpu"), seed)


def test_an_entry_is_computed_once_across_runs(tmp_path):
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(5.0)

    salt = _salt(_net())
    for _ in range(2):  # two runs, each with its own RunCache
        cache = RunCache(DiskStore(tmp_path, salt, torch.device("cpu")))
        assert torch.equal(cache.get_or_compute(("work", "model", "test", 0.02), compute),
                           torch.arange(5.0))
    assert len(calls) == 1
    assert cache.disk is not None and cache.disk.hits == 1


def test_a_changed_weight_data_seed_or_version_misses(monkeypatch):
    net = _net()
    salt = _salt(net)
    changed = _net()
    with torch.no_grad():
        changed[1].weight[0, 0] += 1e-6
    assert model_hash(changed) != model_hash(net) and _salt(changed) != salt
    other = {"test": DataSplit(SPLITS["test"].x.clone(), SPLITS["test"].y.flip(0))}
    assert _salt(net, other) != salt
    assert _salt(net, seed=1) != salt
    monkeypatch.setattr(robaudit, "__version__", "99.0")
    assert _salt(net) != salt


def test_dataclasses_round_trip_and_tensors_go_back_where_they_were():
    result = DeepFoolResult(*(torch.rand(3) for _ in range(len(
        DeepFoolResult.__dataclass_fields__))))
    back = decode(encode(result), torch.device("cpu"))
    assert type(back) is DeepFoolResult
    for name in DeepFoolResult.__dataclass_fields__:
        assert torch.equal(getattr(back, name), getattr(result, name))


def test_foreign_values_are_not_stored_and_foreign_classes_not_rebuilt(tmp_path):
    @dataclass
    class Foreign:
        x: int

    with pytest.raises(NotStorable):
        encode(Foreign(1))
    with pytest.raises(NotStorable):
        decode({"__robaudit_dataclass__": "os:system", "fields": {}}, torch.device("cpu"))
    store = DiskStore(tmp_path, "salt", torch.device("cpu"))
    store.save(("k",), Foreign(1))
    store.save((object(),), torch.zeros(1))  # a key without a stable repr
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_entry_is_recomputed(tmp_path):
    store = DiskStore(tmp_path, "salt", torch.device("cpu"))
    store.save(("k",), torch.ones(2))
    store.path(("k",)).write_bytes(b"not a torch file")
    assert store.load(("k",)) == (False, None)
    cache = RunCache(store)
    assert torch.equal(cache.get_or_compute(("k",), lambda: torch.zeros(2)), torch.zeros(2))
    assert store.load(("k",))[0]


def test_a_second_run_gives_identical_values_and_details(write_spec, robaudit_main, tmp_path,
                                                         toy_dir):
    torch.save(_net().state_dict(), toy_dir / "linear.pt")  # the same model in both runs
    header = TOY_HEADER.replace("toy_model.py:linear\n",
                                "toy_model.py:linear\n  weights: linear.pt\n")
    spec = write_spec(header + "checks:\n  - metric: deepfool_min_distortion\n"
                                   "  - metric: uap_fooling_rate\n    params: {max_passes: 2}\n")
    reports = []
    for name in ("first", "second"):
        path = tmp_path / f"{name}.json"
        code, out, err = robaudit_main("run", spec, "--cache-dir", tmp_path / "cache",
                                       "--json", path)
        assert code == 0, out + err
        reports.append(json.loads(path.read_text())["checks"])
    assert any((tmp_path / "cache").iterdir())
    for first, second in zip(*reports, strict=True):
        assert (first["value"], first["details"]) == (second["value"], second["details"])
