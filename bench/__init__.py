"""Benchmarks of the farm's pure policies (run as modules: ``python -m bench.simulate``)."""
