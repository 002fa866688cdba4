"""``cloud-sync serve``: the queue, a sync worker per destination and the local API in one
process, run the way systemd expects.

- Ready (``READY=1``) once every listener is open and every worker runs.
- SIGTERM or SIGINT: ``POST`` is answered 503 while each worker settles its batch in
  flight, then the listeners close (requests already reading their body finish), the
  file is closed, and the process exits 0,
  within ``[service] stop_timeout`` (past it, what is still in flight comes back when its
  lease runs out).
- SIGHUP: the file is read again. One that does not validate changes nothing (the reason
  is logged). When only uploader settings or secrets changed, each such destination gets a
  new worker and the others keep running. When the queue's options changed (``[queue]``, a
  destination added or removed, its flush options or budget), the queue is reopened: the
  MQTT input holds its messages unacknowledged while every worker settles its batch in
  flight, the file is closed (``POST`` is answered 503 with ``Retry-After`` for that
  moment) and opened with the new options, and the workers start again. When the queue
  refuses the new options (a destination removed that still has items to deliver), the
  file is opened again as it was and the refusal logged like a broken file. A new ingest
  token is used at once; ``db_path``, the rest of ``[ingest]`` and ``[service]`` wait for
  a restart (logged). A file that cannot be opened again as it was stops the service with
  exit code 1.
- With ``WATCHDOG_USEC`` set, ``WATCHDOG=1`` is sent every half period while every worker
  is alive; ``STATUS=`` carries the depth and the state.
"""

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import replace
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .._errors import CloudSyncError
from .._upload_types import Uploader
from ..aio import AsyncCloudSyncQueue, AsyncSyncWorker
from .api import IngestAPI
from .config import ConfigError, ServiceConfig, load
from .listen import unix_listener, web
from .notify import Notifier
from .rejects import keep_payloads
from .uploaders import build_uploaders

if TYPE_CHECKING:
    from .mqtt_input import MQTTInput

logger = logging.getLogger("pyv_edge_agent.cloud_sync.service")

# How often STATUS= is refreshed when no watchdog asks for more.
_STATUS_SECONDS = 30.0


class Service:
    """One running service, from ``run()`` to its return (the exit code)."""

    def __init__(self, config: ServiceConfig, uploaders: Dict[str, Uploader]) -> None:
        self.config = config
        self.uploaders = uploaders
        self.notifier = Notifier()
        self.stopping = False
        self.queue: Optional[AsyncCloudSyncQueue] = None
        self.workers: Dict[str, AsyncSyncWorker] = {}
        self.runners: List[web.BaseRunner] = []
        self.mqtt_input: Optional["MQTTInput"] = None
        self.api: Optional[IngestAPI] = None
        self._reloading: Optional["asyncio.Task[None]"] = None
        self.exit_code = 0

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return 0 after a clean stop, 1 after a reload
        that could not open the file again."""
        loop = asyncio.get_running_loop()
        # Made here, on the running loop: before Python 3.10 an Event binds to the loop of
        # the moment it is made.
        stop = asyncio.Event()
        self.queue = await AsyncCloudSyncQueue.open(**self.config.queue_options())
        for name, uploader in self.uploaders.items():
            self.workers[name] = self._worker(name, uploader)
        api = self.api = IngestAPI(
            self.queue,
            self.config.ingest,
            not_ready=self._not_ready,
            stopping=lambda: self.stopping,
            more_metrics=self._mqtt_metrics,
        )
        await self._listen(api)
        self._subscribe()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon, stop)
        self.notifier.send("READY=1", f"STATUS=serving; {await self._depth()} items queued")
        logger.info("ready: serving %s for %s", self.queue.db_path, sorted(self.workers))
        pulse = asyncio.ensure_future(self._pulse())
        await stop.wait()
        pulse.cancel()
        return await self._shut_down()

    def _worker(self, name: str, uploader: Uploader) -> AsyncSyncWorker:
        assert self.queue is not None
        return AsyncSyncWorker(
            self.queue, {name: uploader}, interval=self.config.interval, handle_sigterm=False, name=f"cloud-sync-{name}"
        ).start()

    async def _listen(self, api: IngestAPI) -> None:
        ingest = self.config.ingest
        if ingest.unix_socket is not None:
            runner = web.ServerRunner(api.server(tcp=False), handle_signals=False)
            await runner.setup()
            self.runners.append(runner)
            sock = unix_listener(ingest.unix_socket, ingest.socket_mode, ingest.socket_group)
            await web.SockSite(runner, sock).start()
            logger.info("listening on unix socket %s (mode %o)", ingest.unix_socket, ingest.socket_mode)
        if ingest.http is not None:
            runner = web.ServerRunner(api.server(tcp=True), handle_signals=False)
            await runner.setup()
            self.runners.append(runner)
            host, port = ingest.http
            tls = ingest.server_tls()
            await web.TCPSite(runner, host, port, ssl_context=tls).start()
            scheme = "http" if tls is None else "https"
            logger.info("listening on %s://%s:%d (bearer token required)", scheme, host, port)

    def _subscribe(self) -> None:
        mqtt = self.config.ingest.mqtt
        if mqtt is None:
            return
        from .mqtt_input import MQTTInput, rejects_path

        assert self.queue is not None
        path = rejects_path(mqtt, self.queue.db_path)
        self.mqtt_input = MQTTInput(mqtt, self.queue.queue, path, keep_payloads(self.config.queue))
        self.mqtt_input.start()

    def _mqtt_metrics(self) -> List[str]:
        if self.mqtt_input is None:
            return []
        return [
            "# HELP cloud_sync_ingest_mqtt_stored_total MQTT messages stored (then acknowledged).",
            "# TYPE cloud_sync_ingest_mqtt_stored_total counter",
            f"cloud_sync_ingest_mqtt_stored_total {self.mqtt_input.stored}",
            "# HELP cloud_sync_ingest_mqtt_rejected_total MQTT messages kept in the rejects file (not JSON objects).",
            "# TYPE cloud_sync_ingest_mqtt_rejected_total counter",
            f"cloud_sync_ingest_mqtt_rejected_total {self.mqtt_input.rejected}",
        ]

    def _not_ready(self) -> Optional[str]:
        assert self.queue is not None
        if self.queue.closed:
            return "the queue is being reopened for a new configuration"
        if not os.access(self.queue.db_path, os.W_OK):
            return f"the queue file {self.queue.db_path} is not writable"
        dead = sorted(name for name, worker in self.workers.items() if not worker.is_alive())
        if dead:
            return f"the workers of {dead} are not running"
        if self.mqtt_input is not None and not self.mqtt_input.alive():
            return "the MQTT input has stopped"
        if self.mqtt_input is not None and not self.mqtt_input.connected.is_set():
            return "the MQTT input is not connected to its broker"
        return None

    async def _depth(self) -> int:
        assert self.queue is not None
        return await self.queue.pending_count()

    async def _pulse(self) -> None:
        """WATCHDOG=1 while every worker is alive, and STATUS= with the depth."""
        watchdog = self.notifier.watchdog_seconds if self.config.watchdog else None
        period = watchdog / 2 if watchdog else _STATUS_SECONDS
        while True:
            await asyncio.sleep(period)
            if not self.notifier.enabled:
                continue
            assert self.queue is not None
            state = self._not_ready() or "serving"
            fields = [f"STATUS={state}" if self.queue.closed else f"STATUS={state}; {await self._depth()} items queued"]
            # A reload replaces the workers; it ends once their batches in flight are settled.
            reloading = self._reloading is not None and not self._reloading.done()
            alive = reloading or all(worker.is_alive() for worker in self.workers.values())
            if watchdog and alive and (self.mqtt_input is None or self.mqtt_input.alive()):
                fields.append("WATCHDOG=1")
            self.notifier.send(*fields)

    async def _shut_down(self) -> int:
        self.stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping: finishing the batches in flight")
        logger.info("stopping: refusing new items, finishing the batches in flight")
        try:
            await asyncio.wait_for(self._finish(), self.config.stop_timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "stopped after %.0f s with work in flight; its items come back when their lease ends",
                self.config.stop_timeout,
            )
        else:
            logger.info("stopped")
        return self.exit_code

    async def _finish(self) -> None:
        # The workers first: while they settle their batches, producers still get their
        # 503 and Retry-After rather than a refused connection. Then the listeners (requests
        # already past their headers end), and the file last. A reload under way ends first:
        # it may be reopening the file.
        if self._reloading is not None:
            await self._reloading
        if self.mqtt_input is not None:
            # Not acknowledged what it has not committed: the broker sends it to the next run.
            await asyncio.get_running_loop().run_in_executor(None, self.mqtt_input.stop, self.config.stop_timeout)
        await asyncio.gather(*(worker.stop() for worker in self.workers.values()))
        await asyncio.gather(*(runner.cleanup() for runner in self.runners))
        if self.config.ingest.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.ingest.unix_socket)
        if self.queue is not None:
            await self.queue.close()

    def _reload_soon(self, stop: asyncio.Event) -> None:
        if not self.stopping and (self._reloading is None or self._reloading.done()):
            self._reloading = asyncio.ensure_future(self._reload(stop))

    async def _reload(self, stop: asyncio.Event) -> None:
        """Read the file again; apply what can change while running, keep the rest."""
        try:
            config = load(self.config.path)
            uploaders = build_uploaders(config)
            self._check_reloadable(config)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.config
        if config.queue_options() != old.queue_options():
            try:
                await self._reopen(config, uploaders)
            except ConfigError as exc:
                logger.error("reload refused, keeping the running configuration: %s", exc)
                return
            except (CloudSyncError, ValueError, TypeError, OSError) as exc:
                logger.critical("stopping: the queue file could not be reopened as it was: %s", exc)
                self.exit_code = 1
                stop.set()
                return
            done = f"reopened the queue for {sorted(config.destinations)}"
        else:
            changed = sorted(
                name
                for name in config.destinations
                if (config.destinations[name].type, config.destinations[name].uploader)
                != (old.destinations[name].type, old.destinations[name].uploader)
            )
            for name in changed:
                await self.workers[name].stop()
                self.workers[name] = self._worker(name, uploaders[name])
                self.uploaders[name] = uploaders[name]
            done = f"new uploaders for {changed}" if changed else "no destination's uploader changed"
        ingest = replace(old.ingest, token=config.ingest.token)
        if ingest != old.ingest and self.api is not None:
            self.api.ingest = ingest
            logger.info("reload: the new ingest token is in use")
        self.config = replace(old, queue=config.queue, destinations=config.destinations, ingest=ingest)
        later = [
            part
            for part, changed_part in (
                ("[ingest]", replace(config.ingest, token=None) != replace(old.ingest, token=None)),
                ("[service]", _service_table(config) != _service_table(old)),
            )
            if changed_part
        ]
        if later:
            logger.warning("reload: changes to %s take effect at the next restart", ", ".join(later))
        logger.info("reloaded: %s", done)

    def _check_reloadable(self, config: ServiceConfig) -> None:
        """Refuse what a reload cannot apply without losing track of items."""
        if config.queue["db_path"] != self.config.queue["db_path"]:
            raise ConfigError(
                f"{config.path}: queue.db_path: changed to {config.queue['db_path']!r}; moving to another"
                " file needs a restart (the items of the running one stay in it)"
            )
        if self.mqtt_input is not None:
            # The running MQTT input keeps its routes until a restart: none may name a
            # destination the new file removes.
            gone = sorted(
                name
                for route in self.mqtt_input.config.routes
                for name in route.destinations or ()
                if name not in config.destinations
            )
            if gone:
                raise ConfigError(
                    f"{config.path}: destinations: {gone[0]!r} is removed but the running [ingest.mqtt]"
                    " routes send to it; change both and restart"
                )

    async def _reopen(self, config: ServiceConfig, uploaders: Dict[str, Uploader]) -> None:
        """Close the queue and open it with ``config``'s options, nothing enqueued or in
        flight lost: the MQTT input holds its messages unacknowledged, each worker settles
        its batch in flight first, and ``POST`` gets 503 while the queue is closed. A refusal
        of the new options is a ``ConfigError``, raised once the running queue is open again."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        logger.info("reload: reopening the queue for %s", sorted(config.destinations))
        if self.mqtt_input is not None:
            await loop.run_in_executor(None, self.mqtt_input.hold)
        try:
            await asyncio.gather(*(worker.stop() for worker in self.workers.values()))
            await self.queue.close()
            try:
                self.queue = await AsyncCloudSyncQueue.open(**config.queue_options())
            except (CloudSyncError, ValueError, TypeError, OSError) as exc:
                self.queue = await AsyncCloudSyncQueue.open(**self.config.queue_options())
                self._start_workers()
                raise ConfigError(f"{config.path}: the queue refuses the new options: {exc}") from None
            self.uploaders = uploaders
            self._start_workers()
            if self.mqtt_input is not None:
                # Read by the input under the hold: a queue that seals now gets no payload in clear.
                self.mqtt_input.keep_payloads = keep_payloads(config.queue)
        finally:
            if self.mqtt_input is not None:
                self.mqtt_input.resume(None if self.queue.closed else self.queue.queue)

    def _start_workers(self) -> None:
        assert self.queue is not None
        self.workers = {name: self._worker(name, uploader) for name, uploader in self.uploaders.items()}
        if self.api is not None:
            self.api.queue = self.queue


def _service_table(config: ServiceConfig) -> Tuple[float, bool, float]:
    return config.stop_timeout, config.watchdog, config.interval


def serve(path: str) -> int:
    """Load the file at ``path`` and serve until stopped; the exit code."""
    config = load(path)
    uploaders = build_uploaders(config)
    return asyncio.run(Service(config, uploaders).run())
