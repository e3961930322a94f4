"""`python -m bench`: benchmarks of gearman-driver against its baselines (see __main__)."""
