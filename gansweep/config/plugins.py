"""A study's plugins: Python files whose decorated definitions (gansweep.extend) add losses,
metrics and architectures to the registries before the study is validated.

Each file is read once, hashed (sha256 of its bytes) and executed as a module named after
that hash, so that the same file imported again is not run twice, and an edited file is a new
module whose entries replace the old file's. The driver hands every file's text to the
workers with each unit (service.protocol.UnitConfig), which import it the same way before
they build the trial: a cluster's nodes need no copy of the study's folder. Anything a plugin
raises while it is imported becomes a ConfigError naming the file and the line.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gansweep.errors import ConfigError
from gansweep.extend import PLUGIN_MODULE_PREFIX, REGISTRIES


@dataclass(frozen=True)
class PluginFile:
    """One plugin as a worker needs it: its path (where errors and MLflow say it came from),
    its text and the hash of that text."""

    path: str
    sha256: str
    source: str

    @property
    def module_name(self) -> str:
        stem = "".join(c if c.isalnum() else "_" for c in Path(self.path).stem)
        return f"{PLUGIN_MODULE_PREFIX}{stem}_{self.sha256[:16]}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


_LOADED: dict[str, PluginFile] = {}  # absolute path -> the version imported last


def resolve(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The study's `plugins` made absolute against `folder` (the study file's, or the working
    directory's for --set); anything but a list of strings is left for the schema to name."""
    plugins = raw.get("plugins")
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list):
        return raw
    return {**raw, "plugins": [str((folder / p).resolve()) if isinstance(p, str) and p else p for p in plugins]}


def read(path: str, where: str) -> PluginFile:
    """The plugin file at `path`; `where` names the study and field for an error."""
    file = Path(path)
    if file.suffix != ".py":
        raise ConfigError(f"{where}: a plugin is a Python file (.py), got {path!r}")
    if not file.is_file():
        raise ConfigError(f"{where}: plugin file not found: {path}")
    data = file.read_bytes()
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: plugin {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return PluginFile(str(file), hashlib.sha256(data).hexdigest(), source)


def install(plugin: PluginFile) -> None:
    """Import the plugin (once per text): its decorators register its entries. Raises a
    ConfigError naming the file and line of whatever the plugin raised."""
    if plugin.module_name in sys.modules:
        _LOADED[plugin.path] = plugin
        return
    try:
        code = compile(plugin.source, plugin.path, "exec")
    except SyntaxError as err:
        raise ConfigError(f"{plugin.path}:{err.lineno}: plugin: {err.msg}") from None
    module = types.ModuleType(plugin.module_name)
    module.__file__ = plugin.path
    sys.modules[plugin.module_name] = module  # the decorators look their module up by name
    try:
        exec(code, module.__dict__)
    except Exception as err:  # noqa: BLE001 (anything a researcher's file raises, reported as theirs)
        del sys.modules[plugin.module_name]
        raise ConfigError(f"{plugin.path}:{_line_in(err, plugin.path)}: plugin: {type(err).__name__}: {err}") from None
    _LOADED[plugin.path] = plugin


def _line_in(err: BaseException, path: str) -> int | str:
    """The last line of `path` in the error's traceback (where the plugin called what
    raised), or '?' when the plugin's own code is not in it."""
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if frame.filename == path]
    return lines[-1] if lines and lines[-1] is not None else "?"


def load(paths: list[Any] | tuple[Any, ...], where: str) -> tuple[PluginFile, ...]:
    """Read and import each plugin a study names, in order (anything but a list is left for
    the schema to name)."""
    if not isinstance(paths, (list, tuple)):
        return ()
    loaded = []
    for index, path in enumerate(paths):
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}[{index}]: a plugin is the path of a Python file, got {path!r}")
        plugin = read(path, f"{where}[{index}]")
        install(plugin)
        loaded.append(plugin)
    return tuple(loaded)


def files(paths: tuple[str, ...]) -> tuple[PluginFile, ...]:
    """The imported versions of a validated study's plugins (what workers import)."""
    missing = [p for p in paths if p not in _LOADED]
    if missing:
        raise ConfigError(f"plugins: {', '.join(missing)} not loaded: load the study with config.load_study first")
    return tuple(_LOADED[p] for p in paths)


def install_all(sent: list[dict[str, str]] | None) -> None:
    """A worker's side: import the plugins a unit's config carries (PluginFile.as_dict)."""
    for plugin in sent or []:
        install(PluginFile(**plugin))


def forget_all() -> None:
    """Unload every plugin: their entries, modules and versions (a process that loads
    another study's, and tests)."""
    for registry in REGISTRIES.values():
        registry.drop_plugins()
    for name in [n for n in sys.modules if n.startswith(PLUGIN_MODULE_PREFIX)]:
        del sys.modules[name]
    _LOADED.clear()
