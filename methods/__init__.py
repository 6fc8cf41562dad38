"""Compression methods. Importing this package registers the built-in ones."""

from methods import rtn  # noqa: F401
