"""The sections of bench/bench_gpu.py, one module each, on one harness (harness.py).

Each section is a function of the `Bench` that bench_gpu.py builds and runs in
order; what a section leaves for later ones is listed on `Bench`.
"""
