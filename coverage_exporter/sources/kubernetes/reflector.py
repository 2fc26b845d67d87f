"""A generic list+watch cache of one Kubernetes resource, after client-go's
Reflector.

LIST (paginated) once, then WATCH from the list's resourceVersion forever,
resuming each new watch from the last resourceVersion seen (bookmarks
included). Only a 410 Gone (expired resourceVersion or continue token) makes
it LIST again, so in steady state the apiserver sees nothing but watches.

The cache is replaced in one assignment after a complete LIST: readers see
the old complete cache or the new complete one, never a half-filled one.
Connection errors keep the cache, mark the reflector unhealthy and retry
with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

import aiohttp

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.api import ApiClient, ApiError, GoneError
from coverage_exporter.sources.kubernetes.parse import (
    FormUnsupported,
    ObjectParser,
    Page,
    ParseError,
    decode_event,
    decode_meta,
    decode_status,
    peek_list_meta,
)
from coverage_exporter.sources.kubernetes.pod_table import TABLE_ACCEPT

if TYPE_CHECKING:
    from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder

log = logging.getLogger("coverage_exporter.kubernetes")

K = TypeVar("K")
T = TypeVar("T")

# A LIST whose continue token expires this many times in a row is too slow
# for the compaction window; back off instead of hammering etcd.
_MAX_LIST_RESTARTS = 3
# Bad objects logged one by one per LIST; the rest only counted.
_MAX_LOGGED_BAD_OBJECTS = 10
# Watches in a row that end having delivered nothing (no event, no
# bookmark) before the reflector counts as down: one such end is a
# restart or a load balancer's rotation, several are a proxy that cuts
# every watch, and a cache that silently stops following the cluster.
MAX_EMPTY_WATCHES = 3
# A watch open this long without being ended was not cut "at once": what
# tells a proxy that ends every watch right after its headers (ms) from a
# quiet watch, long before the apiserver's first bookmark (about a minute)
# could prove anything. Well under the shortest --interval the tests use (2
# s), so that a reflector is back within one cycle of the first watch that
# stays open.
WATCH_STAYS_OPEN_SECONDS = 1.0
# Watch requests in a row answered with an error (not 410) before the
# reflector gives up on its resourceVersion and lists again.
MAX_WATCH_ERRORS = 3
# kube-apiserver's watch cache sends a bookmark to every watcher that asked
# for them about once a minute (cacher bookmarkFrequency); silence well past
# that means a half-open connection.


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (aiohttp.ClientError, TimeoutError)):
        return httpclient.describe(exc)
    return untrusted.printable(str(exc)) or type(exc).__name__


def _consume(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()


class _ContinueExpired(Exception):
    """410 on a LIST page after the first: only this LIST must restart."""


class Backoff:
    """Capped exponential backoff with jitter (each delay in [d/2, d])."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class Reflector(Generic[K, T]):
    def __init__(
        self,
        api: ApiClient,
        path: str,
        parser: ObjectParser[K, T],
        health: SourceHealth,
        *,
        name: str | None = None,
        params: Mapping[str, str] | None = None,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        backoff: Backoff | None = None,
        on_state_change: Callable[[], None] | None = None,
        watch_idle_seconds: float = parse_seconds(defaults.KUBERNETES_WATCH_IDLE_TIMEOUT),
        page_decoder: NodePageDecoder | None = None,
        list_deadline_seconds: float | None = None,
    ) -> None:
        """page_decoder: LIST pages go to it (a worker process) while the
        reflector's parser is the decoder's; watch events never do.
        list_deadline_seconds: a relist (all its pages) still under way after
        this long makes the reflector down until it completes (_list_overdue);
        None: no deadline."""
        self.api = api
        self.path = path
        self.parser = parser
        self.name = name or path
        self._health = health
        self._params = dict(params or {})
        self._page_size = page_size
        self._watch_timeout = watch_timeout_seconds
        self._watch_idle = watch_idle_seconds
        self._page_decoder = page_decoder
        self._list_deadline = list_deadline_seconds
        self._ahead: tuple[str, asyncio.Task[tuple[bytearray, str]]] | None = None
        """The next LIST page, asked for before this one is parsed, and its
        continue token (see _page)."""
        self._empty_watches = 0
        """Watches in a row that delivered nothing."""
        self._silent_watch = False
        """One of those stayed open and still delivered nothing (a half-open
        connection, a proxy that holds the stream back): only a delivered
        event or bookmark proves the watch works again, not staying open."""
        self._watch_opened = 0.0
        """Monotonic time the current watch's headers arrived (0: none)."""
        self._lines_this_watch = 0
        self._watch_errors = 0
        self._backoff = backoff or Backoff()
        self._on_state_change = on_state_change
        self._cache: dict[K, T] = {}
        self._synced = asyncio.Event()
        self._settled = asyncio.Event()
        """Set at the first LIST's end, whether it succeeded or failed."""
        self._task: asyncio.Task[None] | None = None
        self.resource_version: str | None = None
        self.healthy = False
        self.last_error = ""
        self.generation = 0
        """Bumped on every cache change: lets readers reuse derived views."""
        self.lists_total = 0
        self.last_list_pages = 0
        self.listing_objects = 0
        """Objects of the LIST under way (audit's progress on a terminal)."""
        self._failing_since = 0.0

    # --- public --------------------------------------------------------------

    @property
    def cache(self) -> Mapping[K, T]:
        """The current cache. Watch events mutate it in place; copy it (or
        check `generation`) if you need a stable view."""
        return self._cache

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"reflector {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not await task: a cancellation of the caller must still
            # propagate, only the task's own CancelledError is expected.
            await asyncio.wait([task])

    async def wait_synced(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    async def wait_settled(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the first LIST either completed or failed; False on
        timeout. Lets a caller stop waiting for a reflector that cannot
        list (RBAC, a bad selector) instead of waiting out a sync timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return True

    # --- loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                self._watch_opened = 0.0
                try:
                    await self._watch()
                except TimeoutError:
                    why = f"no byte and no bookmark for {self._watch_idle:g}s (half-open?)"
                    self._silent_watch = True
                    await self._after_empty_watch(why)
                    continue
                stayed_open = (
                    self._watch_opened > 0
                    and time.monotonic() - self._watch_opened > WATCH_STAYS_OPEN_SECONDS
                )
                # The server closed the watch (timeoutSeconds): resume at once,
                # unless it keeps closing immediately (a misbehaving proxy).
                if stayed_open:
                    self._backoff.reset()
                if self._lines_this_watch == 0:
                    self._silent_watch |= stayed_open
                    await self._after_empty_watch(
                        "watch ended without an event or bookmark", cut=not stayed_open
                    )
                elif not stayed_open:
                    await asyncio.sleep(self._backoff.next())
            except FormUnsupported as exc:
                if not self._fall_back(str(exc)):
                    await self._failed(_describe(exc))
            except GoneError as exc:
                if self.resource_version is None:
                    # 410 on a fresh LIST: relisting at once would spin.
                    await self._failed(str(exc))
                else:
                    log.info("relisting", extra=fields(resource=self.name, err=exc))
                    self.resource_version = None
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code == 406 and self._fall_back(_describe(exc)):
                    continue  # 406 Not Acceptable: the server has no such form
                await self._failed(_describe(exc), exc.retry_after)
                self._watch_errors += self.resource_version is not None
                if self._watch_errors >= MAX_WATCH_ERRORS:
                    # Like client-go, which relists after any failed watch:
                    # a watch that keeps failing from the same resourceVersion
                    # (etcd's 500 "PrevKv=nil" after a compaction) would
                    # otherwise never recover.
                    log.info(
                        "watch failed repeatedly; relisting",
                        extra=fields(resource=self.name, failures=self._watch_errors),
                    )
                    self.resource_version = None
                    self._watch_errors = 0
            except (ParseError, SourceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                await self._failed(_describe(exc))
            except Exception as exc:
                # Never let one reflector die silently: log, back off, retry.
                log.exception("unexpected error", extra=fields(resource=self.name))
                await self._failed(f"{type(exc).__name__}: {exc}")

    def _fall_back(self, why: str) -> bool:
        """The server cannot answer in the parser's form (a Table): switch to
        the parser's fallback (full objects) and list again. False when there
        is none; the caller then fails as for any error, so the cache is
        never taken for complete ("no pods") because of the form."""
        fallback = self.parser.fallback
        if fallback is None:
            return False
        log.warning(
            "the server refuses this form; falling back to full objects",
            extra=fields(
                resource=self.name, form=self.parser.accept or "application/json", err=why
            ),
        )
        self.parser = fallback
        # Relist: the watch resumes from a LIST made in the new form.
        self.resource_version = None
        return True

    async def _after_empty_watch(self, why: str, cut: bool = False) -> None:
        """A watch delivered nothing (cut: it ended at once). Resume while
        that may be chance (after a backoff if it was cut); after
        MAX_EMPTY_WATCHES in a row the reflector is down (its cache no
        longer follows the cluster) until a watch delivers again or, if
        every one of them was cut, stays open (_stayed_open). One backoff
        per watch: two (this and the cut's) let the retries of a long cut
        drift a minute apart, and the first good watch that much late."""
        self._empty_watches += 1
        if self._empty_watches < MAX_EMPTY_WATCHES:
            log.info(
                "watch ended; resuming",
                extra=fields(resource=self.name, why=why, resource_version=self.resource_version),
            )
            if cut:
                await asyncio.sleep(self._backoff.next())
            return
        await self._failed(f"{why}, {MAX_EMPTY_WATCHES} times in a row or more")

    def _stayed_open(self) -> None:
        """The watch after a run of cut ones stayed open: whatever cut them
        (a proxy, a load balancer) lets watches through again, so the
        reflector is back now, not at the next event or bookmark (a quiet
        cluster sends a bookmark about once a minute). An event missed
        meanwhile is not lost: this watch resumed from the last
        resourceVersion seen, and the apiserver replays what came after."""
        if not self._empty_watches:
            return  # an event came first and did the same
        log.info(
            "watches stay open again",
            extra=fields(resource=self.name, cut_in_a_row=self._empty_watches),
        )
        self._empty_watches = 0
        self._backoff.reset()
        self._set_healthy(True)

    async def _failed(self, message: str, retry_after: float = 0.0) -> None:
        delay = max(self._backoff.next(), retry_after)
        # The first failure of a kind is a warning; its repeats during a long
        # outage would only flood the log (every reflector retries).
        level = logging.DEBUG if message == self.last_error else logging.WARNING
        log.log(
            level,
            "cannot list or watch; keeping the cached objects",
            extra=fields(
                resource=self.name, err=message, cached=len(self._cache), retry_in=f"{delay:.1f}s"
            ),
        )
        self._health.record_error(f"{self.name}: {message}")
        if not self.last_error:
            self._failing_since = time.monotonic()
        self.last_error = message
        self._set_healthy(False)
        self._settled.set()
        await asyncio.sleep(delay)

    def _set_healthy(self, healthy: bool) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            if healthy and self.last_error:
                log.info(
                    "recovered",
                    extra=fields(
                        resource=self.name,
                        failing_for=f"{time.monotonic() - self._failing_since:.1f}s",
                    ),
                )
            if healthy:
                self.last_error = ""
            if self._on_state_change:
                self._on_state_change()

    # --- LIST --------------------------------------------------------------------

    async def _list(self) -> None:
        started = time.monotonic()
        self.listing_objects = 0
        overdue = None
        # A relist only: before the first list completes there is no cache
        # to take for current (not synced is down already).
        if self._list_deadline is not None and self.synced:
            overdue = asyncio.get_running_loop().call_later(self._list_deadline, self._list_overdue)
        try:
            for _attempt in range(_MAX_LIST_RESTARTS):
                try:
                    items, resource_version, pages, bad = await self._list_pages()
                    break
                except _ContinueExpired as exc:
                    log.warning(
                        "continue token expired mid-list; restarting the list",
                        extra=fields(resource=self.name, err=exc),
                    )
            else:
                raise ApiError(
                    410, f"list restarted {_MAX_LIST_RESTARTS} times on expired continue"
                )
        finally:
            if overdue is not None:
                overdue.cancel()
            self._drop_ahead()
            if self._page_decoder is not None:
                self._page_decoder.release()
        # The one-assignment swap: readers never see a partial list.
        self._cache = items
        self.resource_version = resource_version
        self.generation += 1
        self.lists_total += 1
        self.last_list_pages = pages
        log.info(
            "listed",
            extra=fields(
                resource=self.name,
                objects=len(items),
                pages=pages,
                skipped=bad,
                duration=f"{time.monotonic() - started:.2f}s",
                resource_version=resource_version,
                # Which form served it: the fallback from Table must be visible.
                form="table" if self.parser.accept == TABLE_ACCEPT else "full",
            ),
        )
        first = not self.synced
        self._synced.set()
        self._settled.set()
        self._set_healthy(True)
        if first and self._on_state_change:
            self._on_state_change()

    def _list_overdue(self) -> None:
        """The LIST is past its deadline. A relist (after a 410) keeps the
        last complete list in the cache, no longer current: down until the
        LIST completes, so that no cycle serves it as current. The LIST goes
        on (each page is bounded by the request timeout): dropped and
        retried, one that takes longer than the deadline even when healthy
        (a busy control plane, 100k Nodes) would never complete."""
        message = (
            f"LIST not complete after {self._list_deadline:g}s "
            f"({self.listing_objects} objects so far); "
            "the cached objects are those of the last complete list"
        )
        log.warning(
            "list overdue; down until it completes",
            extra=fields(resource=self.name, err=message, cached=len(self._cache)),
        )
        self._health.record_error(f"{self.name}: {message}")
        if not self.last_error:
            self._failing_since = time.monotonic()
        self.last_error = message
        self._set_healthy(False)

    async def _list_pages(self) -> tuple[dict[K, T], str | None, int, int]:
        items: dict[K, T] = {}
        continue_token: str | None = None
        resource_version: str | None = None
        pages = bad = 0
        while True:
            parser = self.parser
            page_size = parser.page_size or self._page_size
            params = {**self._params, **parser.params, "limit": str(page_size)}
            if continue_token:
                params["continue"] = continue_token
            try:
                page = await self._page(params, parser)
            except GoneError as exc:
                if continue_token is None:
                    raise
                raise _ContinueExpired(exc.message) from exc
            pages += 1
            for error in page.errors:
                bad += 1
                if bad <= _MAX_LOGGED_BAD_OBJECTS:
                    log.warning(
                        "skipping a bad object", extra=fields(resource=self.name, err=error)
                    )
            for parsed in page.items:
                items[parsed.key] = parsed.obj
            self.listing_objects = len(items)
            meta = page.metadata
            # Every page of one paginated LIST carries the same snapshot RV.
            resource_version = (meta.resource_version if meta else None) or resource_version
            continue_token = meta.continue_ if meta else None
            if not continue_token:
                return items, resource_version, pages, bad

    async def _page(self, params: dict[str, str], parser: ObjectParser[K, T]) -> Page[K, T]:
        decoder = self._page_decoder
        if decoder is None or parser is not decoder.parser:
            # The page's bytes are the big transient: gone once parsed.
            return parser.parse_page(await self.api.get(self.path, params, parser.accept))
        token = params.get("continue")
        if self._ahead is not None and self._ahead[0] == token:
            task = self._ahead[1]
            self._ahead = None
            body, encoding = await task
        else:
            self._drop_ahead()
            body, encoding = await self.api.get_encoded(self.path, params, parser.accept)
        # The worker parses this page while the next one downloads: the
        # page's head names the next continue token. Were the head not the
        # apiserver's (None), or did the parsed page name another token,
        # the next page is asked for after the parse, as without a worker.
        head = peek_list_meta(body, encoding)
        if head is not None and head.continue_:
            ahead = {**params, "continue": head.continue_}
            self._ahead = (
                head.continue_,
                asyncio.create_task(self.api.get_encoded(self.path, ahead, parser.accept)),
            )
        page, inflated = await decoder.decode(body, encoding, self.api.max_body_bytes)
        self._health.response_bytes_total += inflated
        return page  # type: ignore[return-value]  # the decoder's parser is the reflector's

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            task = self._ahead[1]
            self._ahead = None
            task.cancel()
            # Its outcome (an error, a cancelled read) no longer matters.
            task.add_done_callback(_consume)

    # --- WATCH -------------------------------------------------------------------

    async def _watch(self) -> None:
        # Random spread like client-go, so hundreds of watches do not all
        # reconnect in the same second.
        timeout = int(self._watch_timeout * random.uniform(1.0, 2.0))
        params = {
            **self._params,
            **self.parser.params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        self._lines_this_watch = 0
        async with self.api.stream_lines(
            self.path, params, self._watch_idle, self.parser.accept
        ) as lines:
            log.debug(
                "watching", extra=fields(resource=self.name, resource_version=self.resource_version)
            )
            # A watch that only opens proves little (a proxy that cuts it
            # at once also answers 200): after a run of empty watches, a
            # delivered event or bookmark brings the reflector back, or the
            # watch staying open if every empty one was cut at once.
            self._watch_opened = time.monotonic()
            if self._empty_watches < MAX_EMPTY_WATCHES:
                self._set_healthy(True)
            stays_open = None
            if self._empty_watches and not self._silent_watch:
                stays_open = asyncio.get_running_loop().call_later(
                    WATCH_STAYS_OPEN_SECONDS, self._stayed_open
                )
            try:
                async for line in lines:
                    self._handle_event(line)
                    self._lines_this_watch += 1
                    self._watch_errors = 0
                    if self._empty_watches:
                        self._empty_watches = 0
                        self._set_healthy(True)
                    self._silent_watch = False
            finally:
                if stays_open is not None:
                    stays_open.cancel()

    def _handle_event(self, line: bytes) -> None:
        # A line that is not an event means the stream framing is broken:
        # the ParseError propagates, and the watch resumes from the last RV.
        event = decode_event(line)
        data = event.object
        if not len(data):
            raise ParseError(f"watch event {event.type} without object")
        kind = event.type
        if kind == "BOOKMARK":
            meta = decode_meta(data)
            if meta and meta.resource_version:
                self.resource_version = meta.resource_version
            return
        if kind == "ERROR":
            status = decode_status(data)
            code = (status.code if status else None) or 500
            message = (status.message if status else None) or "watch error"
            reason = (status.reason if status else None) or ""
            raise (GoneError if code == 410 else ApiError)(code, message, reason)
        if kind == "DELETED":
            self.parser.check_form(data)
            key, rv = self.parser.identify(data)
            if key is not None and self._cache.pop(key, None) is not None:
                self.generation += 1
        elif kind in ("ADDED", "MODIFIED"):
            try:
                parsed = self.parser.parse(data)
            except FormUnsupported:
                raise  # not one bad object: the whole form (see _run)
            except ParseError as exc:
                # Its previous state is no longer true: drop it, keep going.
                key, rv = self.parser.identify(data)
                log.warning(
                    "skipping a bad object", extra=fields(resource=self.name, event=kind, err=exc)
                )
                if key is not None and self._cache.pop(key, None) is not None:
                    self.generation += 1
            else:
                key, rv = parsed.key, parsed.resource_version
                # Most MODIFIED events (node heartbeats, status churn) leave
                # the slim object unchanged: keep the generation, so snapshot
                # views stay cached.
                if self._cache.get(key) != parsed.obj:
                    self._cache[key] = parsed.obj
                    self.generation += 1
        else:
            log.warning(
                "ignoring a watch event of unknown type",
                extra=fields(resource=self.name, event=untrusted.printable(str(kind))),
            )
            return
        if rv:
            self.resource_version = rv
