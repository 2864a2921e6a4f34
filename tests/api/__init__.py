"""HTTP API contract tests: the real scheduler in-process, spoken to over HTTP."""
