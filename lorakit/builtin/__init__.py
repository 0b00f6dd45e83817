"""Built-in plugins: metrics, losses, LR schedules and data sources, registered through entry points."""
