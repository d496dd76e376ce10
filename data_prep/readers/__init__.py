"""Benchmark readers, one module per benchmark, registered by dataset name."""

from data_prep.readers.base import Reader, available_readers, get_reader, register_reader

__all__ = ["Reader", "available_readers", "get_reader", "register_reader"]
