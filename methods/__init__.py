"""Compression methods. Importing this package registers the built-in ones."""

from methods import diffq, gpfq, lc, opq, rtn  # noqa: F401
