"""Data: sources → DataFrame, label maps + validation, tokenization, fingerprinted cache."""
