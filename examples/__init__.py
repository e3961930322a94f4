"""Example worker code for gearman-driver's demo and tests."""
