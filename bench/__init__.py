"""The benchmark suite (bench/run.py) and the transport comparison (bench/transport.py)."""
