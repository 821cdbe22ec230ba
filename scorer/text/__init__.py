"""Tokenisation, one path for train, export and run: texts to ids, long rows cut, token-budget batches."""
