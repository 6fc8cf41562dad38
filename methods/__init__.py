"""Compression methods. Importing this package registers the built-in ones."""

from methods import gpfq, lc, rtn  # noqa: F401
