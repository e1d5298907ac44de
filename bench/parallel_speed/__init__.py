"""The pieces of bench/bench_parallel.py: the plan, the processes, the rows."""
