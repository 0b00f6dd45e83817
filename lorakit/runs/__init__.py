"""Experiment folders: layout and snapshots, the experiment index, compare and rollback."""
