"""TaskMaster: a distributed task scheduler on trio structured concurrency."""

__version__ = "0.1.0"
