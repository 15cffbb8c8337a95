"""The test network itself (tests/netproxy.py): what it adds to a link is really there,
measured with real clients over real sockets. Lower bounds only: never a wall-clock ceiling."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

obstore = pytest.importorskip("obstore")
pytest.importorskip("moto.server")


def _client(url: str, retries: int = 10):
    from obstore.store import from_url

    bucket = url.split("/")[2]
    retry = {"max_retries": retries, "retry_timeout": timedelta(seconds=20)}
    return from_url(f"s3://{bucket}", client_options={"allow_http": True}, retry_config=retry)


def _key(url: str, name: str) -> str:
    return f"{url.split('/', 3)[3]}/{name}"


def test_round_trips_and_counts(proxied_s3):
    client, proxy = _client(proxied_s3.url), proxied_s3.proxy
    key = _key(proxied_s3.url, "small")
    obstore.put(client, key, b"x" * 1000)
    assert bytes(obstore.get(client, key).bytes()) == b"x" * 1000
    obstore.head(client, key)
    list(obstore.list(client, prefix=_key(proxied_s3.url, "")))
    counts = proxy.counts()
    assert (counts["PUT"], counts["GET"], counts["HEAD"], counts["LIST"]) == (1, 1, 1, 1)
    assert counts["bytes_up"] == 1000 and counts["bytes_down"] >= 1000


def test_a_large_object_goes_up_in_parts(proxied_s3):
    client, proxy = _client(proxied_s3.url), proxied_s3.proxy
    key = _key(proxied_s3.url, "large")
    data = bytes(range(256)) * (12 * 2**20 // 256)
    obstore.put(client, key, data)
    assert proxy.counts()["multipart_uploads"] == 1 and proxy.counts()["PUT"] >= 3
    assert bytes(obstore.get(client, key).bytes()) == data


def test_latency_and_bandwidth_are_added(proxied_s3):
    client, proxy = _client(proxied_s3.url), proxied_s3.proxy
    key = _key(proxied_s3.url, "timed")
    obstore.put(client, key, b"y" * 4_000_000)
    proxy.rtt = 0.05
    start = time.perf_counter()
    for _ in range(5):
        obstore.get_range(client, key, start=0, end=10)
    assert time.perf_counter() - start >= 5 * 0.05
    proxy.rtt, proxy.bandwidth = 0.0, 20e6
    start = time.perf_counter()
    assert len(bytes(obstore.get(client, key).bytes())) == 4_000_000
    assert time.perf_counter() - start >= 0.9 * 4_000_000 / 20e6


@pytest.mark.parametrize("kind", ["503", "500", "drop", "cut"])
def test_failures_are_injected_and_retried(proxied_s3, kind):
    client, proxy = _client(proxied_s3.url), proxied_s3.proxy
    key = _key(proxied_s3.url, "flaky")
    data = b"z" * 300_000
    obstore.put(client, key, data)
    proxy.fail(kind, times=2, method="GET")
    assert bytes(obstore.get(client, key).bytes()) == data
    assert proxy.injected == 2 and proxy.counts()["GET"] == 3


def test_failures_beyond_the_retry_budget_are_errors(proxied_s3):
    client, proxy = _client(proxied_s3.url, retries=2), proxied_s3.proxy
    key = _key(proxied_s3.url, "down")
    obstore.put(client, key, b"w")
    proxy.fail("503", times=100, method="GET")
    with pytest.raises(Exception, match=r"503|Slow"):
        obstore.get(client, key).bytes()
    assert proxy.injected == 3  # the request and its two retries


def test_s3fs_retries_through_the_proxy(proxied_s3):
    from annlayout.storage.remote import filesystem

    fs, proxy = filesystem(proxied_s3.url), proxied_s3.proxy
    path = f"{proxied_s3.url}/fsspec-flaky"
    fs.pipe(path, b"v" * 2_500_000)  # botocore sends Expect: 100-continue for this size
    for kind in ("503", "drop", "cut"):
        proxy.fail(kind, times=1, method="GET")
    assert fs.cat(path) == b"v" * 2_500_000
    assert proxy.injected == 3
