"""wgcable's benchmarks: ``python -m bench`` runs them all (see bench/run.py, docs/benchmarks.md).

The older scripts (``wgctrl_bench.py``, ``agent_bench.py``) still run on their own too, so
they import nothing from this package; the newer section modules import from them.
"""
