"""The model: one shared encoder adapted by a tuning method, one head per task."""
