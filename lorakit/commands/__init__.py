"""CLI subcommands, one module per group; imported lazily by :mod:`lorakit.cli`."""
