"""Policies of the service under load: quality tiers, admission, autoscaling.

tiers.py        the degradation table and how a tier changes a request
admission.py    at submit: sync, queue, lower tier, or 429/503 with Retry-After
load.py         what admission reads: queue work per stage, replicas, GPU use, reservations
eta.py          the one ETA model: admission, queued events and GET all use it
autoscaling.py  Ray Serve policies: the denoiser on queue depth, with the gateways' waiting jobs
"""
