"""`tm bench`: the benchmark. See tm/bench/run.py."""
