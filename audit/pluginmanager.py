"""Plugin discovery: built-ins, ``-p`` modules and the ``robaudit`` entry-point group."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from robaudit import hookspecs
from robaudit.datasource import DataSource
from robaudit.errors import UsageError
from robaudit.metric import Metric

#: The packages whose modules are the built-in plugins; a module's name is the plugin's name
#: (the one that ``-p no:NAME`` blocks).
BUILTIN_PACKAGES = (
    "robaudit.plugins.loaders",
    "robaudit.plugins.metrics",
    "robaudit.plugins.reporters",
)


def builtin_plugins() -> dict[str, str]:
    """Every built-in plugin: its name and its module. Metrics are grouped by family in
    sub-packages (``metrics/deformation/spearman.py``); a plugin is named by its module's last
    component (``spearman``), whatever family holds it."""
    found = {}
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            leaf = info.name.rsplit(".", 1)[1]
            if not info.ispkg and not leaf.startswith("_"):
                if leaf in found:
                    raise RuntimeError(f"two built-in plugins are named {leaf!r}: "
                                       f"{found[leaf]} and {info.name}")
                found[leaf] = info.name
    return found


ENTRY_POINT_GROUP = "robaudit"
AUTOLOAD_ENV = "ROBAUDIT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginInfo:
    name: str
    origin: str  # "builtin", "entry point <dist>", "-p"
    module: str


@dataclass
class Plugins:
    """The loaded plugins, the metrics and data sources they registered, and what went wrong."""

    pm: pluggy.PluginManager
    loaded: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Metric] = field(default_factory=dict)
    data_sources: dict[str, DataSource] = field(default_factory=dict)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook


def _collect(plugins: Plugins, hook: str, kind: str, store: dict[str, Any]) -> None:
    """Call ``hook`` of each plugin in load order (built-ins first) and keep the first item
    registered under each name: an installed package can add metrics and data sources but
    never silently replace a built-in one (nor one loaded before it). A plugin whose hook
    raises is reported and the others still register."""
    order = {info.name: index for index, info in enumerate(plugins.loaded)}
    owner: dict[str, str] = {}
    impls = getattr(plugins.pm.hook, hook).get_hookimpls()
    for impl in sorted(impls, key=lambda i: order.get(i.plugin_name, len(order))):

        def register(item: Any, plugin: str = impl.plugin_name) -> None:
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name:
                plugins.problems.append(f"plugin {plugin!r} registered a {kind} without a name "
                                        f"({item!r}); it is ignored")
            elif name in store:
                plugins.problems.append(
                    f"plugin {plugin!r} registers {kind} {name!r}, which plugin {owner[name]!r} "
                    f"already registered; {plugin!r}'s is ignored (give it another name)")
            else:
                store[name], owner[name] = item, plugin

        try:
            impl.function(register=register)
        except (Exception, SystemExit) as exc:
            plugins.problems.append(f"plugin {impl.plugin_name!r} failed to register its "
                                    f"{kind}s: {type(exc).__name__}: {exc}")


def load_plugins(blocked: Iterable[str] = (), extra: Iterable[str] = ()) -> Plugins:
    """Load the built-ins, then entry points (unless ``ROBAUDIT_DISABLE_PLUGIN_AUTOLOAD`` is
    set), then the modules named with ``-p``; skip every name in ``blocked``.

    A built-in or ``-p`` module that fails to import is a usage error; a broken entry point is
    recorded in ``problems`` and the rest still load.
    """
    blocked = set(blocked)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    for name in blocked:
        pm.set_blocked(name)

    for name, module_name in builtin_plugins().items():
        if name not in blocked:
            pm.register(importlib.import_module(module_name), name=name)
            plugins.loaded.append(PluginInfo(name, "builtin", module_name))

    if not os.environ.get(AUTOLOAD_ENV):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except (Exception, SystemExit) as exc:  # a broken plugin must not stop the run
                dist = ep.dist.name if ep.dist else "?"
                plugins.problems.append(
                    f"plugin {ep.name!r} (entry point {ep.value} of {dist}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            plugins.loaded.append(PluginInfo(ep.name, f"entry point ({ep.value})", ep.value))

    for module_name in extra:
        if module_name in blocked or pm.has_plugin(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:
            raise UsageError(f"-p {module_name}: cannot import plugin: {exc}") from None
        pm.register(module, name=module_name)
        plugins.loaded.append(PluginInfo(module_name, "-p", module_name))

    _collect(plugins, "robaudit_register_metrics", "metric", plugins.metrics)
    _collect(plugins, "robaudit_register_data_sources", "data source", plugins.data_sources)
    return plugins
