"""Configs: TOML files that inherit (``loader``) validated against typed attrs classes (``schema``)."""

from .loader import RawConfig, load_raw, parse_override, resolve_path
from .schema import ExperimentConfig, load_config

__all__ = ["ExperimentConfig", "RawConfig", "load_config", "load_raw", "parse_override", "resolve_path"]
