"""Developer scripts: benchmarks and load tests (not part of the cloudtask package)."""
