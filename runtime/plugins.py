"""Plugins chosen by configuration: one pattern for every kind (VAD engines, edge ASR, cloud ASR,
detectors), after frigate's ``detectors/``.

Each kind has a base class with a ``type_key`` class attribute and one :class:`Registry`. A plugin
is a subclass that declares its ``type_key`` and registers itself with the registry's decorator;
its package imports every plugin module, so importing the package fills the registry. Plugin
modules import their heavy or optional packages inside the plugin (at construction), so listing or
checking names costs nothing, and a missing package fails at start with the extra that installs it.

A settings field that names a plugin validates it with :meth:`Registry.check`, so ``--check-config``
refuses an unknown name and lists the known ones::

    ENGINES: Registry[TranscriptionEngine] = Registry("transcription engine")

    @ENGINES.register
    class WhisperTransformers(TranscriptionEngine):
        type_key = "transformers"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

P = TypeVar("P")


class UnknownPlugin(ValueError):
    """A configured plugin name that no plugin of its kind declares."""


class MissingPackage(RuntimeError):
    """A plugin whose optional package is not installed; the message names the extra to install."""


class Registry(Generic[P]):
    """The plugins of one kind, by ``type_key``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._plugins: dict[str, type[P]] = {}

    def register(self, cls: type[P]) -> type[P]:
        """Class decorator: make ``cls`` selectable by its ``type_key``."""
        key = getattr(cls, "type_key", None)
        if not isinstance(key, str) or not key:
            raise TypeError(f"{cls.__name__} has no type_key: a {self.kind} must declare one")
        if key in self._plugins and self._plugins[key] is not cls:
            raise ValueError(f"two {self.kind}s claim type_key {key!r}: {self._plugins[key].__name__}, {cls.__name__}")
        self._plugins[key] = cls
        return cls

    def names(self) -> list[str]:
        """The known type keys, sorted."""
        return sorted(self._plugins)

    def check(self, name: str) -> str:
        """``name`` if a plugin declares it, else :class:`UnknownPlugin` listing the known ones (a
        ``ValueError``, so a pydantic validator can call it)."""
        if name not in self._plugins:
            raise UnknownPlugin(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}")
        return name

    def get(self, name: str) -> type[P]:
        """The plugin class named ``name`` (:class:`UnknownPlugin` if none)."""
        return self._plugins[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._plugins)


def require(module: str, extra: str, plugin: str) -> Any:
    """Import an optional package for ``plugin``, or raise :class:`MissingPackage` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackage(
            f"{plugin} needs the Python package {module!r}: pip install 'edgecap[{extra}]'"
        ) from exc
