"""Worker code the benchmarks load: each `bw_*` package is one namespace for gearman-driver.

Each jobs module also has BARE_TASKS (function name -> callable(workload) -> bytes), which the
bare one-interpreter-per-process workers (bench.bare_worker, "the supervisord way") run.
"""
