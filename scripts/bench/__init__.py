"""The benchmark suite of issue 6: ``python -m scripts.bench.run --help``."""
