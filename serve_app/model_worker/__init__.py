"""A model replica's runtime, free of Ray: `ModelWorker` (worker.py).

Ray Serve's model deployments (deployments/base.py) load a pipeline and hand
it to a `ModelWorker`, which runs every model call on one thread and keeps
what a replica reports about itself: health, out-of-memory recoveries,
warm-up and start-up times. Its parts, each testable on its own:

- failures.py: what a failed model call becomes (recoverable out-of-memory,
  or a one-line client error that no longer pins the call's tensors);
- gpu_memory.py: torch's allocator figures, read without importing torch
  where no GPU is in use;
- warmup.py: warm-up steps before the replica is ready and after.
"""

from serve_app.model_worker.worker import ModelWorker

__all__ = ["ModelWorker"]
