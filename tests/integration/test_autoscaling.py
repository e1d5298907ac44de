"""The denoiser scales on the jobs the gateways report (issue 14), deployed as serve_config.yaml is.

An app of its own (tests/helpers/autoscale_app.py): two fixed-count gateway
replicas sharing one SQLite job store, a denoiser scaling on queue depth from
zero, and gateways that never dispatch the jobs this test writes to the
store. No request reaches the denoiser and it has no replica to report
anything: every replica it gets comes from the gateways' figure.
(Scaling on requests queued at the denoiser: tests/integration/test_load.py.)
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.autoscale_app import (
    AUTOSCALE_APP,
    app_status,
    autoscale_app_args,
    deploy_from_config,
    replicas,
)
from tests.helpers.jobs import job_id, make_job
from tests.helpers.load_app import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(serve_url, data_dir, tmp_path_factory):
    from ray import serve

    from serve_app.jobs.sqlite_store import SQLiteJobStore

    path = tmp_path_factory.mktemp("autoscale") / "jobs.sqlite3"
    deploy_from_config(AUTOSCALE_APP, f"/{AUTOSCALE_APP}", autoscale_app_args(data_dir, path))
    wait_for(lambda: app_status(AUTOSCALE_APP) == "RUNNING", 240, "the autoscale app to run")
    jobs = SQLiteJobStore(path)
    yield jobs
    jobs.close()
    serve.delete(AUTOSCALE_APP)


def denoiser() -> tuple[int, str]:
    return replicas(AUTOSCALE_APP, "Denoiser")


@pytest.mark.timeout(600)
def test_jobs_waiting_in_the_store_scale_the_denoiser_from_zero_and_back(store):
    wait_for(lambda: denoiser()[0] == 0, 60, "no denoiser replica while nothing waits")

    store.create(make_job(1, created_at=time.time()))
    # Both gateway replicas count this one job in their shared store: one replica, not
    # two. A summed figure would set the target to 2 long before the first replica is
    # up, so (1 running, HEALTHY) would never be seen.
    wait_for(lambda: denoiser() == (1, "HEALTHY"), 120, "one denoiser replica for one waiting job")

    store.create(make_job(2, created_at=time.time()))
    wait_for(lambda: denoiser()[0] == 2, 120, "a second denoiser replica for a second waiting job")
    # Nothing was dispatched: the replicas came from the gateways' report alone.
    assert [store.get(job_id(n)).owner for n in (1, 2)] == [None, None]

    for n in (1, 2):
        store.delete(job_id(n))
    wait_for(lambda: denoiser()[0] == 0, 120, "scale-down to zero once nothing waits")
