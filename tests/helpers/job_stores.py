"""Job store tests' shared pieces: the lease they claim with, and a race of claims released together."""

from __future__ import annotations

import threading

from serve_app.jobs.model import JobRecord

LEASE_S = 10.0


def race_claims(stores, job_id_: str, threads: int = 8) -> list[str]:
    """Claim from `threads` threads released together; the owners that won."""
    barrier = threading.Barrier(threads)
    results: list[JobRecord | None] = [None] * threads
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = stores[i % len(stores)].claim(job_id_, f"runner-{i}", now=100.0, lease_s=LEASE_S)
        except BaseException as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    return [r.owner for r in results if r is not None]
