"""Compression methods. Importing this package registers the built-in ones."""

from methods import lc, rtn  # noqa: F401
