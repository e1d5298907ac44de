"""The gateway's collaborators (serve_app/handles.py): the Ray side and the fakes fit one Protocol.

Nothing type-checks deployments/ or tests/helpers, so a fake could drift from
the real signature and the tests built on it would keep passing. Checked here
method by method: present, a coroutine, and the same parameters (names, order,
defaults) as the Protocol.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Generic, Protocol

import pytest

from deployments.gateway import ResultCacheHandle
from deployments.result_cache import ResultCache
from serve_app.graph import StageGraph
from serve_app.handles import CacheAdministration, CacheClaims, ResultCacheClient, VideoGenerator
from tests.helpers.fakes import FakeGenerator


def members(protocol: type) -> list[str]:
    """The methods a Protocol asks for, its bases' included."""
    names = {
        name
        for cls in protocol.__mro__
        if cls not in (object, Protocol, Generic)
        for name, value in vars(cls).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    return sorted(names)


def parameters(fn) -> list[tuple[str, object]]:
    """(name, default) of each parameter after `self`."""
    return [(p.name, p.default) for p in list(inspect.signature(fn).parameters.values())[1:]]


IMPLEMENTATIONS = [
    (VideoGenerator, StageGraph),
    (VideoGenerator, FakeGenerator),
    (ResultCacheClient, ResultCacheHandle),
    (ResultCacheClient, ResultCache.func_or_class),  # the deployment class, as tests build it without Ray
]


def test_the_protocols_name_what_the_gateway_calls():
    assert members(VideoGenerator) == ["generate"]
    assert members(CacheClaims) == ["claim", "fill", "forget_source", "release"]
    assert members(CacheAdministration) == ["collect_orphans", "delete", "purge", "stats"]
    assert members(ResultCacheClient) == [
        "claim",
        "collect_orphans",
        "delete",
        "fill",
        "forget_source",
        "purge",
        "release",
        "stats",
    ]


@pytest.mark.parametrize(
    "protocol, implementation", IMPLEMENTATIONS, ids=[f"{p.__name__}-{i.__name__}" for p, i in IMPLEMENTATIONS]
)
def test_an_implementation_has_every_method_of_its_protocol(protocol, implementation):
    for name in members(protocol):
        method = getattr(implementation, name, None)
        assert method is not None, f"{implementation.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(method), f"{implementation.__name__}.{name} is not async"
        assert parameters(method) == parameters(getattr(protocol, name)), f"{implementation.__name__}.{name}"


RAY_SERVE_HOOKS = {"reconfigure"}


def test_the_result_cache_deployment_has_no_remote_method_the_protocol_lacks():
    # The handle wrapper spells out each method, so one added to the deployment would be
    # unreachable from the gateway until the Protocol (and the wrapper) name it too.
    # `reconfigure` is Ray Serve's own hook (the live settings, serve_app/live.py), never called by the gateway.
    cls = ResultCache.func_or_class
    remote = sorted(
        n
        for n, v in vars(cls).items()
        if inspect.iscoroutinefunction(v) and not n.startswith("_") and n not in RAY_SERVE_HOOKS
    )
    assert remote == members(ResultCacheClient)


class _Handle:
    """A Ray Serve handle's shape: `handle.method.remote(*args)` returns something to await."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        handle = self

        class Method:
            @staticmethod
            def remote(*args):
                handle.calls.append((name, args))

                async def response():
                    return f"{name} answered"

                return response()

        return Method


def test_the_cache_handle_forwards_each_call_to_the_deployment():
    handle = _Handle()
    cache = ResultCacheHandle(handle)

    async def scenario():
        return [
            await cache.claim("k", "job-1"),
            await cache.release("k", "job-1"),
            await cache.fill("k", {"id": "job-1"}, "job-1"),
            await cache.stats(),
            await cache.delete("k"),
            await cache.purge(),
        ]

    answers = asyncio.run(scenario())
    assert answers == ["claim answered", None, "fill answered", "stats answered", "delete answered", "purge answered"]
    assert handle.calls == [
        ("claim", ("k", "job-1")),
        ("release", ("k", "job-1")),
        ("fill", ("k", {"id": "job-1"}, "job-1")),
        ("stats", ()),
        ("delete", ("k",)),
        ("purge", ()),
    ]
