"""The cache between runs never serves another model's numbers (issue #19): the salt names the
whole model entry, every file it references, the model's code, the data, seed, device and
versions. Each is changed one at a time and must miss; an unchanged rerun must hit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import robaudit
from robaudit.cachekey import code_files, model_salt, referenced_files, run_salt
from robaudit.context import DataSplit

NET_SOURCE = '''\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(16, hidden)
        self.act = nn.Tanh()
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(self.flat(x{scale}))))


def net(hidden: int = 8) -> nn.Module:
    return Net(hidden)
'''

ENTRY = {"factory": "net.py:net", "kwargs": {}, "weights": "net.pt", "torchscript": None,
         "input_range": [0.0, 1.0], "normalize": None, "features": None}


def _write_net(folder: Path, scale: str = "") -> None:
    (folder / "net.py").write_text(NET_SOURCE.format(scale=scale))


def _built(folder: Path) -> nn.Module:
    """The network the loader builds from ``net.py`` (executed from its file, as a spec's
    ``path.py:callable`` factory is)."""
    from robaudit.plugins.loaders.models import robaudit_load_model

    return robaudit_load_model(ENTRY, folder)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    _write_net(tmp_path)
    torch.manual_seed(0)
    torch.save(_net_state(), tmp_path / "net.pt")
    return tmp_path


def _net_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.ModuleDict({"hidden": nn.Linear(16, 8), "out": nn.Linear(8, 2)}).state_dict()


def test_every_field_of_the_model_entry_is_keyed_one_at_a_time(model_dir):
    network = _built(model_dir)
    salt = model_salt(ENTRY, model_dir, network)
    assert model_salt(dict(ENTRY), model_dir, network) == salt  # unchanged: the same salt
    changes = {
        "features": "act", "input_range": [0.0, 255.0], "kwargs": {"hidden": 8},
        "normalize": {"mean": [0.5], "std": [0.25]}, "factory": "net.py:Net",
        # a model-source kind that this module has never heard of is keyed all the same
        "timm": "resnet18", "export": "net.pt2",
    }
    salts = {salt}
    for key, value in changes.items():
        salts.add(model_salt({**ENTRY, key: value}, model_dir, network))
    assert len(salts) == len(changes) + 1


def test_the_content_of_every_referenced_file_and_folder_is_keyed(model_dir):
    network = _built(model_dir)
    (model_dir / "hf").mkdir()
    (model_dir / "hf" / "config.json").write_text("{}")
    entry = {**ENTRY, "huggingface": "hf"}
    before = referenced_files(entry, model_dir)
    assert set(before) == {"net.py", "net.pt", "hf"}
    salt = model_salt(entry, model_dir, network)

    # the same weights file name with one value changed, without touching the built network
    state = _net_state()
    state["out.bias"][0] += 1e-6
    torch.save(state, model_dir / "net.pt")
    assert model_salt(entry, model_dir, network) != salt
    torch.save(_net_state(), model_dir / "net.pt")
    assert model_salt(entry, model_dir, network) == salt

    (model_dir / "hf" / "config.json").write_text('{"num_labels": 2}')  # a file of a folder
    assert model_salt(entry, model_dir, network) != salt


def test_a_factory_file_with_another_forward_and_the_same_weights_misses(model_dir):
    salt = model_salt(ENTRY, model_dir, _built(model_dir))
    _write_net(model_dir, scale=" / 2")  # the input halved; the class, names and weights same
    halved = _built(model_dir)
    assert model_salt(ENTRY, model_dir, halved) != salt


def test_the_source_of_a_module_factory_and_of_the_model_classes_is_keyed(tmp_path,
                                                                          monkeypatch):
    """A ``package.module:callable`` factory references no file of the spec: its module's
    source, and that of the module defining each layer's class, are hashed instead."""
    package = tmp_path / "cachekey_models"
    package.mkdir()
    (package / "__init__.py").write_text("from cachekey_models.nets import net\n")
    (package / "nets.py").write_text(NET_SOURCE.format(scale=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("cachekey_models", "cachekey_models.nets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import cachekey_models

    entry = {**ENTRY, "factory": "cachekey_models:net", "weights": None}
    network = cachekey_models.net()
    files = code_files(entry, network)
    assert {package / "__init__.py", package / "nets.py"} <= set(files)
    assert Path(nn.Linear.__module__.replace(".", "/") + ".py").name in {f.name for f in files}
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    assert referenced_files(entry, spec_dir) == {}
    salt = model_salt(entry, spec_dir, network)
    (package / "nets.py").write_text(NET_SOURCE.format(scale=" / 2"))
    assert model_salt(entry, spec_dir, network) != salt


def test_data_seed_device_and_versions_are_keyed(monkeypatch):
    splits = {"test": DataSplit(torch.rand(8, 1, 4, 4), torch.arange(8) % 2)}
    data = {"source": "toy", "split": "test", "batch_size": 256}
    cpu = torch.device("cpu")

    def salt_of(models=None, data=data, splits=splits, device=cpu, seed=0):
        return run_salt(models or {"model": "m"}, data, splits, device, seed)

    salt = salt_of()
    assert salt_of(splits=dict(splits), data=dict(data)) == salt
    other = {"test": DataSplit(splits["test"].x.clone(), splits["test"].y.flip(0))}
    assert salt_of(splits=other) != salt
    assert salt_of(data={**data, "batch_size": 8}) != salt
    # the DataLoader's process count reads the same units in the same order: not keyed
    assert salt_of(data={**data, "workers": 2}) == salt_of(data={**data, "workers": 0}) == salt
    assert salt_of(seed=1) != salt
    assert salt_of(models={"model": "other"}) != salt
    assert salt_of(models={"model": "m", "source": "s"}) != salt
    assert salt_of(device=torch.device("meta")) != salt
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert salt_of() != salt
    monkeypatch.undo()
    monkeypatch.setattr(robaudit, "__version__", "99.0")
    assert salt_of() != salt


# -- end to end: the three stale reads of issue #19 --------------------------------------------
HEADER = """\
audit: cache keys
model:
  factory: net.py:net
  weights: net.pt
{extra}data:
  source: toy
  n: 32
checks:
{checks}"""


def _run(robaudit_main, spec: Path, report: Path, cache: Path | None) -> dict[str, float]:
    args = ["run", spec, "--json", report, "-q"]
    if cache is not None:
        args += ["--cache-dir", cache]
    code, out, err = robaudit_main(*args)
    assert code in (0, 1), out + err
    assert "Traceback" not in out + err
    return {c["id"]: c["value"] for c in json.loads(report.read_text())["checks"]}


@pytest.mark.parametrize("change", ["forward", "input_range", "features"])
def test_a_changed_model_never_reads_the_cached_numbers(change, model_dir, robaudit_main):
    """Run, rerun unchanged (a hit: nothing new is stored, same values), change one thing and
    run with the cache: new entries are stored and the values are those of a run without the
    cache."""
    checks = {
        "features": "  - metric: intertwinedness\n  - metric: rank_order_spearman\n"
                    "    params: {pairs: 20, trials: 20}\n",
        "input_range": "  - metric: deepfool_min_distortion\n  - metric: uap_fooling_rate\n"
                       "    params: {max_passes: 2}\n",
        "forward": "  - metric: clean_accuracy\n  - metric: deepfool_min_distortion\n",
    }[change]
    spec = model_dir / "spec.yaml"
    extra = "  features: hidden\n" if change == "features" else ""
    spec.write_text(HEADER.format(extra=extra, checks=checks))
    cache = model_dir / "cache"
    first = _run(robaudit_main, spec, model_dir / "first.json", cache)
    stored = sorted(cache.iterdir())
    assert stored
    assert _run(robaudit_main, spec, model_dir / "again.json", cache) == first
    assert sorted(cache.iterdir()) == stored  # every entry was a hit

    if change == "features":
        spec.write_text(HEADER.format(extra="  features: act\n", checks=checks))
    elif change == "input_range":
        spec.write_text(HEADER.format(extra="  input_range: [0.2, 0.8]\n", checks=checks))
    else:
        _write_net(model_dir, scale=" * 4")
    cached = _run(robaudit_main, spec, model_dir / "cached.json", cache)
    assert len(list(cache.iterdir())) > len(stored)  # a miss: new entries
    fresh = _run(robaudit_main, spec, model_dir / "fresh.json", None)
    assert cached == fresh
    assert cached != first  # the change mattered, so a stale read would have shown


def test_the_unchanged_second_run_reads_every_entry(model_dir, robaudit_main, monkeypatch):
    from robaudit.diskcache import DiskStore

    spec = model_dir / "spec.yaml"
    spec.write_text(HEADER.format(extra="", checks="  - metric: deepfool_min_distortion\n"))
    stores: list[DiskStore] = []
    original = DiskStore.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        stores.append(self)

    monkeypatch.setattr(DiskStore, "__init__", recording)
    cache = model_dir / "cache"
    for name in ("first", "second"):
        _run(robaudit_main, spec, model_dir / f"{name}.json", cache)
    first, second = stores
    assert first.hits == 0 and first.misses > 0
    assert second.misses == 0 and second.hits == first.misses
    assert second.salt == first.salt


def test_a_relative_value_naming_the_spec_folder_is_not_hashed_whole(tmp_path):
    (tmp_path / "sub").mkdir()
    entry = {"factory": "m:f", "kwargs": {"root": ".", "parent": "..", "file": "w.pt"}}
    (tmp_path / "sub" / "w.pt").write_bytes(b"w")
    assert set(referenced_files(entry, tmp_path / "sub")) == {"w.pt"}


def test_a_cache_folder_inside_a_referenced_folder_is_left_out(tmp_path):
    """Else every entry written would change the salt, and the cache would never hit."""
    (tmp_path / "model" / "cache").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    entry = {"huggingface": "model"}
    skip = tmp_path / "model" / "cache"
    before = referenced_files(entry, tmp_path, skip)
    (skip / "entry.pt").write_bytes(b"entry")
    assert referenced_files(entry, tmp_path, skip) == before
    assert referenced_files(entry, tmp_path) != before
