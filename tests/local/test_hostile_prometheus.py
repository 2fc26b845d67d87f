"""Hostile answers from a Prometheus: what no real Prometheus sends but a
proxy, a broken ingress or a hostile endpoint can. Served by a local
aiohttp server on 127.0.0.1 to the real PrometheusSource and Collector.

Each answer must end as one source error (source_up 0, one log line
without a traceback), never as a crash, unbounded memory, or a number
taken for a target count.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter import logs
from coverage_exporter.cycle import CycleRunner, TargetPoller
from coverage_exporter.model.scope import Scope
from coverage_exporter.sources.errors import DEFAULT_LIMITS, Limits, SourceError
from coverage_exporter.sources.prometheus import target_decoder
from coverage_exporter.sources.prometheus.source import (
    PrometheusEndpoint,
    PrometheusSource,
    parse_pool_target_counts,
    parse_scrape_pools,
    parse_targets,
)
from fakes.prometheus import NE_POOL, FakePrometheus, fixture_bytes, json_response
from tests.unit import clusters
from tests.unit.test_cycle import StaticCluster, samples

MiB = 1 << 20
DEEP = b"[" * 20_000 + b"]" * 20_000
"""40 KB of nesting; msgspec gives up (RecursionError) at about 5,000 levels."""
ANSI_AND_NEWLINES = 'red \x1b[31mALERT\x1b[0m\nlevel=error msg="forged"\\ \u2028end'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gzip_bomb(inflated_mib: int) -> bytes:
    """inflated_mib MiB of zeros, gzip-compressed (~1 KB per MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * MiB
    return b"".join([*(packer.compress(block) for _ in range(inflated_mib)), packer.flush()])


def gzip_response(body: bytes) -> web.Response:
    return web.Response(
        body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakePrometheus, str]]:
    server = FakePrometheus()
    async with TestServer(server.app, host="127.0.0.1") as srv:
        yield server, str(srv.make_url("")).rstrip("/")


DECODER: list[target_decoder.TargetDecoder | None] = [None]


@pytest.fixture(autouse=True, params=["thread", "process"])
def decoding(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every hostile answer is tried on both decoding paths: in this
    process's threads, and in the worker process (the default of serve)."""
    DECODER[0] = target_decoder.SHARED if request.param == "process" else None
    yield request.param
    DECODER[0] = None


def source(
    url: str, name: str = "hostile", timeout_seconds: float = 30, **limits: int
) -> PrometheusSource:
    return PrometheusSource(
        PrometheusEndpoint(url=url, name=name, timeout_seconds=timeout_seconds),
        limits=Limits(**limits) if limits else DEFAULT_LIMITS,
        decoder=DECODER[0],
    )


def assert_one_clean_line(caplog: pytest.LogCaptureFixture) -> None:
    """Every record is one printable line without a traceback, its fields
    included."""
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        line = logs.LogfmtFormatter().format(record)
        assert "\n" not in line and "\x1b" not in line, line


# --- /metrics counts -------------------------------------------------------------


@pytest.mark.parametrize("value", ["+Inf", "-Inf", "NaN", "-1", "1.5", "1e400", "0x10"])
def test_a_count_that_is_not_a_count_is_ignored_not_fatal(value: str) -> None:
    text = (
        f'prometheus_target_scrape_pool_targets{{scrape_job="bad"}} {value}\n'
        'prometheus_target_scrape_pool_targets{scrape_job="good"} 3\n'
    )
    assert parse_pool_target_counts(text) == {"good": 3}


async def test_inf_in_metrics_makes_the_pool_read_in_full_and_never_crashes(fake) -> None:
    """Used to raise OverflowError from int(float('+Inf')) out of the cycle."""
    server, url = fake
    server.answers.pool_files = {NE_POOL: server.answers.pool_files[NE_POOL]}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            text=f'prometheus_target_scrape_pool_targets{{scrape_job="{NE_POOL}"}} +Inf\n'
        )

    server.overrides["/metrics"] = metrics
    async with source(url) as prom:
        poller = TargetPoller(prom, full_refresh_seconds=3600)
        first = await poller.poll()
        second = await poller.poll()
    assert prom.health.up
    assert len(second.targets) == len(first.targets) == 3
    # The Inf pool counted as changed: it was read again, not assumed equal.
    assert [q["scrapePool"] for q in server.target_requests()] == [NE_POOL, NE_POOL]


def test_label_value_escapes_in_metrics_are_undone_exactly() -> None:
    text = 'prometheus_target_scrape_pool_targets{scrape_job="a\\"b\\\\c\\nd"} 2\n'
    assert parse_pool_target_counts(text) == {'a"b\\c\nd': 2}


# --- deep nesting ------------------------------------------------------------------


def test_deep_nesting_is_a_source_error_in_every_parser() -> None:
    """Used to raise RecursionError, which nothing caught."""
    in_skipped_field = (
        b'{"status":"success","data":{"activeTargets":[{"discoveredLabels":'
        b'{"__address__":"a:1"},"extra":' + DEEP + b"}]}}"
    )
    with pytest.raises(SourceError, match="nested too deeply"):
        parse_targets(in_skipped_field)
    with pytest.raises(SourceError, match="nested too deeply"):
        parse_scrape_pools(b'{"status":"success","warnings":' + DEEP + b"}")


async def test_one_deeply_nested_answer_leaves_the_other_prometheus_and_the_cycle_alone(
    fake, caplog: pytest.LogCaptureFixture
) -> None:
    _server, url = fake

    async def nested(_: web.Request) -> web.Response:
        return json_response(b'{"status":"success","warnings":' + DEEP + b"}")

    bad_server = FakePrometheus()
    bad_server.overrides["/api/v1/scrape_pools"] = nested
    cluster = clusters.node_exporter(10)
    async with TestServer(bad_server.app, host="127.0.0.1") as bad_srv:
        bad = source(str(bad_srv.make_url("")).rstrip("/"), "bad")
        good = source(url, "good")
        collector = CycleRunner(StaticCluster(cluster), [bad, good], Scope())
        with caplog.at_level(logging.INFO):
            result = await collector.run_cycle()
        await bad.close()
        await good.close()
    up = samples(result.exposition, "scrape_coverage_source_up")
    assert up[(("server", "bad"), ("source", "prometheus"))] == 0.0
    assert up[(("server", "good"), ("source", "prometheus"))] == 1.0
    assert "nested too deeply" in bad.health.last_error
    assert_one_clean_line(caplog)


# --- size limits after decompression -----------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("path", ["/api/v1/scrape_pools", "/api/v1/targets", "/metrics"])
async def test_a_gzip_bomb_is_cut_off_at_the_limit(fake, path: str) -> None:
    """1 GiB of zeros in ~1 MB of gzip: read whole, it took 2.6x its size
    in memory. Cut off at the 8 MiB limit, the peak RSS barely moves."""
    server, url = fake
    bomb = gzip_bomb(1024)

    async def answer(_: web.Request) -> web.Response:
        return gzip_response(bomb)

    server.overrides[path] = answer
    before = peak_rss_mib()
    async with source(url, max_body_bytes=8 * MiB, max_stream_bytes=16 * MiB) as prom:
        if path == "/metrics":
            assert await prom.pool_target_counts() is None
        else:
            with pytest.raises(SourceError, match="larger than"):
                await prom.collect()
    grown = peak_rss_mib() - before
    print(f"gzip bomb {len(bomb)} B -> 1 GiB on {path}: peak RSS grew {grown:.0f} MiB")
    assert grown < 256
    assert prom.health.response_bytes_total <= 16 * MiB + 2 * MiB
    assert "larger than" in prom.health.last_error


async def test_an_honest_but_huge_answer_is_refused_by_its_content_length(fake) -> None:
    server, url = fake

    async def huge(_: web.Request) -> web.Response:
        return json_response(b" " * (9 * MiB))

    server.overrides["/api/v1/scrape_pools"] = huge
    async with source(url, max_body_bytes=8 * MiB) as prom:
        with pytest.raises(SourceError, match="larger than 8388608 bytes"):
            await prom.collect()


async def test_a_truncated_body_is_a_source_error(fake) -> None:
    server, url = fake

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "10000"})
        await response.prepare(request)
        await response.write(b'{"status":"success","data":{"scrapePools":["a"')
        request.transport.close()  # type: ignore[union-attr]
        return response

    server.overrides["/api/v1/scrape_pools"] = truncated
    async with source(url) as prom:
        with pytest.raises(SourceError, match="scrape_pools"):
            await prom.collect()
    assert not prom.health.up


# --- error answers ---------------------------------------------------------------------


async def test_status_error_with_hostile_text_is_escaped_and_cut(fake) -> None:
    server, url = fake
    error = ANSI_AND_NEWLINES + "x" * 5000

    async def failed(_: web.Request) -> web.Response:
        return web.json_response({"status": "error", "errorType": "internal", "error": error})

    server.overrides["/api/v1/scrape_pools"] = failed
    async with source(url) as prom:
        with pytest.raises(SourceError) as raised:
            await prom.collect()
    message = str(raised.value)
    assert "status 'error'" in message
    assert "\x1b" not in message and "\n" not in message and "\u2028" not in message
    assert "\\x1b[31mALERT" in message and "\\n" in message
    assert len(message) < 400


async def test_503_with_retry_after_and_an_html_body(fake) -> None:
    server, url = fake

    async def unavailable(_: web.Request) -> web.Response:
        body = "<html>\x1b[2J" + "upstream overloaded\r\n" * 10_000 + "</html>"
        return web.Response(status=503, text=body, headers={"Retry-After": "120"})

    server.overrides["/api/v1/scrape_pools"] = unavailable
    async with source(url) as prom:
        with pytest.raises(SourceError, match="HTTP 503") as raised:
            await prom.collect()
    assert "\x1b" not in str(raised.value) and "\r" not in str(raised.value)
    # Only the start of the error body was read (after the /metrics answer
    # a full read asks first, for the server's start).
    metrics = len(fixture_bytes("v3_metrics.txt"))
    assert prom.health.response_bytes_total - metrics <= 64 << 10


# --- a slow Prometheus ----------------------------------------------------------------


async def test_a_hanging_prometheus_is_cut_off_by_the_source_deadline(fake) -> None:
    """One Prometheus that never answers used to hold the cycle for its
    whole request timeout; the other's fresh data waited with it."""
    _server, url = fake
    hanging = FakePrometheus()

    async def never(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    hanging.overrides["/api/v1/scrape_pools"] = never
    async with TestServer(hanging.app, host="127.0.0.1") as slow_srv:
        slow = source(str(slow_srv.make_url("")).rstrip("/"), "slow")
        good = source(url, "good")
        collector = CycleRunner(
            StaticCluster(clusters.node_exporter(10)), [slow, good], Scope(), source_deadline=0.5
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A guard against a hang, not a speed assertion: without the
        # deadline the cycle waits out the 30s request timeout.
        result = await asyncio.wait_for(collector.run_cycle(), 20)
        print(f"cycle with a hanging Prometheus took {loop.time() - started:.2f}s")
        await slow.close()
        await good.close()
    up = samples(result.exposition, "scrape_coverage_source_up")
    assert up[(("server", "slow"), ("source", "prometheus"))] == 0.0
    assert up[(("server", "good"), ("source", "prometheus"))] == 1.0
    assert "deadline" in slow.health.last_error


def test_every_source_error_and_last_error_is_printable() -> None:
    """One place makes the server's words safe: whatever message a source
    builds (a pool name from an answer, an error body), the log line, the
    audit table and its JSON get it escaped."""
    from coverage_exporter.health import SourceHealth

    err = SourceError(f"GET /api/v1/targets?scrapePool={ANSI_AND_NEWLINES}")
    assert "\x1b" not in str(err) and "\n" not in str(err) and "\u2028" not in str(err)
    health = SourceHealth("prometheus", "p")
    health.record_error(ANSI_AND_NEWLINES)
    assert "\x1b" not in health.last_error and "\\x1b[31m" in health.last_error
    health.mark(False, 0.1, "x\r\ny" * 1000)
    assert "\r" not in health.last_error and len(health.last_error) <= 1000 + len(" [...]")


def test_deep_nesting_in_a_configuration_answer_is_a_source_error() -> None:
    from coverage_exporter.sources.prometheus.config import parse_config_response

    with pytest.raises(SourceError, match="nested too deeply"):
        parse_config_response(b'{"status":"success","warnings":' + DEEP + b"}")


async def test_a_prometheus_whose_first_request_fails_is_down_not_up(fake) -> None:
    """A poll starts with the configuration read, outside collect(): a dead
    or failing server used to keep source_up 1 there (found by
    tests/e2e/test_faults.py killing a real Prometheus)."""
    server, url = fake
    cluster = StaticCluster(clusters.node_exporter(10))
    async with source(url, "p") as prom:
        collector = CycleRunner(cluster, [prom], Scope())
        first = await collector.run_cycle()
        assert (
            samples(first.exposition, "scrape_coverage_source_up")[
                (("server", "p"), ("source", "prometheus"))
            ]
            == 1.0
        )

        async def broken(_: web.Request) -> web.Response:
            return web.Response(status=500, text="boom")

        server.overrides["/api/v1/status/config"] = broken
        second = await collector.run_cycle()
    assert (
        samples(second.exposition, "scrape_coverage_source_up")[
            (("server", "p"), ("source", "prometheus"))
        ]
        == 0.0
    )
    assert "HTTP 500" in prom.health.last_error


BOMB_TIMEOUT_SECONDS = 600.0
"""Not a speed assertion: generous, so that a loaded machine reaches the
size limit (what is asserted) before the request's timeout."""


def _worker_hwm_mib() -> float:
    worker = target_decoder.SHARED._slot._worker
    assert worker is not None
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def target_list_bomb() -> bytes:
    """A target list whose array never splits between targets: 1 GiB of
    blanks after its head, ~1 MB of gzip."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = b'{"status":"success","data":{"activeTargets":['
    return b"".join(
        [packer.compress(head), *(packer.compress(b" " * MiB) for _ in range(1024)), packer.flush()]
    )


async def test_a_gzip_bomb_is_cut_off_in_the_worker_at_the_default_limit(
    fake, decoding: str
) -> None:
    """The default limits, as `serve` runs: a target list whose array never
    splits between targets (1 GiB of blanks in ~1 MB of gzip) is held
    whole, and what is held whole is bounded by --max-response-bytes
    (256 MiB) on both paths. Before, the worker path held it up to the
    8 GiB stream limit: a 0.41 MB body took the worker to 913 MiB."""
    server, url = fake
    bomb = target_list_bomb()

    async def answer(_: web.Request) -> web.Response:
        return gzip_response(bomb)

    server.overrides["/api/v1/targets"] = answer
    # Inflating 256 MiB in this process's threads took ~20 s at a load of 8
    # on 2 cores, close to the 30 s the other tests give a request: the
    # timeout is a hang guard here; the size limit is what is asserted.
    async with source(url, timeout_seconds=BOMB_TIMEOUT_SECONDS) as prom:
        with pytest.raises(SourceError) as raised:
            await prom.collect()
    if decoding == "process":
        hwm = _worker_hwm_mib()
        target_decoder.SHARED.shutdown()  # its high-water mark is this test's
        print(f"gzip bomb {len(bomb)} B -> 1 GiB of blanks: worker peak RSS {hwm:.0f} MiB")
        assert hwm < 700
    assert "larger than 268435456 bytes" in str(raised.value)


_READ_IN_CHILD = """
import asyncio, sys
from pathlib import Path
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource

def peak_mib() -> float:
    # VmHWM, not ru_maxrss: that one keeps the forking pytest's peak across exec.
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

async def main() -> None:
    endpoint = PrometheusEndpoint(url=sys.argv[1], name="bomb", timeout_seconds=600)
    before = peak_mib()
    async with PrometheusSource(endpoint, decoder=None) as prom:
        try:
            await prom.collect()
        except SourceError as exc:
            print(exc)
    print(f"grew {peak_mib() - before:.0f}")

asyncio.run(main())
"""


@pytest.mark.parametrize("decoding", ["thread"], indirect=True)  # the worker's: the test above
async def test_a_gzip_bomb_on_every_pool_is_held_once_in_process_at_the_default_limit(
    fake,
) -> None:
    """--prometheus-decode-in-process, the default limits, a Prometheus
    whose every pool answers the bomb of the test above: the collector
    process holds one answer whole at a time, as the worker does. Before,
    each of the 4 pools read at once held up to 256 MiB: the process grew
    1,049 MiB (308 MiB after). Read in a child process, whose peak RSS is
    the read's alone."""
    server, url = fake
    bomb = target_list_bomb()

    async def answer(_: web.Request) -> web.Response:
        return gzip_response(bomb)

    server.overrides["/api/v1/targets"] = answer
    assert len(server.answers.pool_files) >= 4  # as many pools read at once as the source reads
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _READ_IN_CHILD,
        url,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    assert child.returncode == 0, out
    error, grown = out.decode().splitlines()[-2:]
    print(f"gzip bomb on every pool, in process: peak RSS grew {grown.split()[1]} MiB")
    assert "larger than 268435456 bytes" in error
    assert float(grown.split()[1]) < 600
