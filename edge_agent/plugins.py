"""A plugin registry: type name -> "module:Class", imported on first use (so unused plugins cost nothing)."""

from __future__ import annotations

import importlib
from typing import Any


class Registry:
    def __init__(self, plugins: dict[str, str]) -> None:
        self.plugins = plugins

    def names(self) -> list[str]:
        return sorted(self.plugins)

    def plugin_class(self, type_name: str) -> Any:
        target = self.plugins.get(type_name)
        if target is None:
            return None
        mod, _, cls = target.partition(":")
        return getattr(importlib.import_module(mod), cls)

    def options_for(self, type_name: str) -> type | None:
        cls = self.plugin_class(type_name)
        return None if cls is None else cls.Options
