"""`tm bench`: the benchmark (README "Benchmark"; never run by the tests but in --quick form).

Rooms:
* `run.py` — the entry (`main`): the three modes, Ctrl-C/SIGTERM, the printed figures;
* `local.py` — the phases on a cluster the bench starts itself, measured in its database;
  `cluster.py` — those real `tm` processes; `memory.py` — their peak memory per phase;
* `remote.py` — the phases on a running cluster, over its HTTP API only (--url);
* `api.py` — ingest phases and HTTP helpers both modes share; `load.py` — the lean
  HTTP/1.1 load generator they use;
* `model.py` — what a run is asked (BenchPlan), what it found (BenchResult), the table.
"""
