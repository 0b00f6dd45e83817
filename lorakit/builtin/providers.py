"""Which distribution provides a plugin name that is not installed: a data table, not a plugin.

The registry adds "pip install <distribution>" to its unknown-name error from here ("install
lorakit-roberta" beats "unknown backbone"). A package that ships a plugin adds its names here.
"""

#: (registry kind, name) → the distribution (or extra) to install
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("backbones", "roberta"): "lorakit-roberta",
    ("task_heads", "ordinal"): "lorakit-ordinal",
    ("losses", "coral"): "lorakit-ordinal",
    ("executors", "ray"): "lorakit[ray]",
    ("tuning_methods", "bottleneck"): "lorakit-adapters",
}
