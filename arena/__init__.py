"""arena: benchmark and architecture-comparison suite for sequence mixers.

This package imports nothing heavy on import: ``arena.registry`` (and later ``arena.records``)
are stdlib-only so that every other package, the reporter included, may import them.
"""
__version__ = "0.1.0"
