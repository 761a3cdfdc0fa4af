"""Chunks as tasks on a Dask cluster: a local one (``--workers N``) or a running scheduler
(``--cluster tcp://host:8786``).

The client plans, keeps the ledger's run and chunk bookkeeping, shows progress and prints the
summary, as a run in one process does; each planned chunk is a task that a worker runs through
its own store connection, in its own transaction. A worker that dies mid-chunk takes its
transaction with it (the server rolls it back) and the scheduler runs the task again
elsewhere, which replaces nothing and duplicates nothing. Dask is the optional ``cluster`` extra
and is imported only here.

Each worker builds its store and rules once per run (a worker plugin), from the settings and
the planned source the client hands it: DBN files at paths every worker sees, or the API
downloads each worker makes itself, at most ``max_concurrent_downloads`` at once across the
cluster. The store must take concurrent writers: PostgreSQL, or a Parquet lake whose ledger is
in PostgreSQL (DuckDB has one writer process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from distributed import Client, KilledWorker, LocalCluster, Semaphore, WorkerPlugin, get_worker

from marketpipe.config import IngestRequest, Settings
from marketpipe.errors import UsageError
from marketpipe.logs import configure
from marketpipe.pipeline import ChunkResult, Lane, LanesFactory, Pipeline, load_rules
from marketpipe.registry import either, kind_of, kinds, many_processes
from marketpipe.sources.base import Source, Throttled
from marketpipe.stores import open_store
from marketpipe.types import Chunk, ChunkStatus


def check(request: IngestRequest, settings: Settings) -> None:
    """What a cluster run cannot take, refused before anything opens: a store whose kind
    takes one writer process (a lake: as its ledger's kind)."""
    config = settings.store
    if many_processes(config):
        return
    kind = kind_of(config.location)
    servers = [k for k in kinds() if k.concurrent_writers]
    named = either([f"{k.title} ({k.example})" for k in servers])
    if kind.concurrent_writers is None:
        ledger = kind_of(config.ledger or "")
        raise UsageError(
            f"--workers/--cluster: {kind.noun}'s {ledger.title} ledger takes one writer process;"
            f" give the {kind.title} a ledger that takes many: --ledger {named}"
        )
    raise UsageError(
        f"--workers/--cluster: {kind.noun} takes one writer process; give a store that takes many"
        f" (--db {named}), or a lake with such a ledger"
    )


CONNECT_TIMEOUT = "10s"


@contextmanager
def connect(workers: int | None, address: str | None) -> Iterator[Any]:
    """A client of the scheduler at ``address``, or of a local cluster of ``workers`` processes
    (one thread each: the rules and the COPY of a chunk hold a core)."""
    if address is not None:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--cluster: no Dask scheduler at {address}: {exc}") from None
        with client:
            yield client
        return
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        yield client


class ChunkRunner(WorkerPlugin):
    """On each worker, for one run: the store connection, the rules and the planned source."""

    def __init__(self, request: IngestRequest, settings: Settings, source: Source, run_id: str) -> None:
        self.request = request
        self.settings = settings
        self.source = source
        self.run_id = run_id
        self.name = f"marketpipe-{run_id}"
        self.pipeline: Pipeline | None = None
        self.lane: Lane | None = None

    def setup(self, worker: Any) -> None:
        configure(self.settings.log_file, "ERROR", scope="marketpipe")  # the worker's own logging stays
        model, validator = load_rules(self.settings)
        store = open_store(self.settings.store, model)
        self.pipeline = Pipeline(
            self.request, self.settings.run, self.source, store, validator, run_id=self.run_id
        )
        # Which worker wrote a chunk: its address, and the process (to find it on its host).
        self.pipeline.log = self.pipeline.log.bind(worker=str(worker.address), pid=os.getpid())
        self.lane = Lane(0, store, validator, threading.Event())
        if isinstance(self.source, Throttled):  # one limit for every worker's downloads
            downloads = Semaphore(self.settings.max_concurrent_downloads, name=f"{self.name}-downloads")
            self.source.download_slot = lambda: downloads

    def teardown(self, worker: Any) -> None:
        if self.pipeline is not None:
            self.pipeline.store.close()
            self.source.close()


def run_chunk(plugin: str, chunk: Chunk, force: bool) -> ChunkResult:
    """The task: one planned chunk fetched (an API chunk downloaded) and run on this worker."""
    runner = get_worker().plugins[plugin]
    assert isinstance(runner, ChunkRunner) and runner.pipeline is not None and runner.lane is not None
    return runner.pipeline.run_planned(chunk, force, runner.lane)


class DaskLanes:
    """The run's chunks as tasks, as many at once as the cluster has worker threads."""

    whole_chunks = True

    def __init__(self, pipeline: Pipeline, client: Any, settings: Settings) -> None:
        self._pipeline = pipeline
        self._client = client
        # The API key never travels (Settings and ApiConfig pickle without it): each worker
        # reads its own DATABENTO_API_KEY, so no task, plugin or dashboard ever holds it.
        runner = ChunkRunner(pipeline.request, settings, pipeline.source, pipeline.run_id)
        self._plugin = runner.name
        client.register_plugin(runner, name=self._plugin)
        self.size = max(1, sum(client.nthreads().values()))
        self._pending: set[Any] = set()  # futures not yet ended: the scheduler keeps their results

    def submit(self, chunk: Chunk, force: bool) -> Future[ChunkResult]:
        done: Future[ChunkResult] = Future()
        task = self._client.submit(run_chunk, self._plugin, chunk, force, pure=False)
        self._pending.add(task)

        def settle(task: Any) -> None:
            self._pending.discard(task)
            try:
                result: ChunkResult = task.result()
            except KilledWorker as exc:
                # Every worker that ran it died (the scheduler's allowed failures are used up):
                # that chunk fails, its transactions died with the workers, the run goes on.
                error = f"{chunk.label}: the workers running it died ({exc})"
                done.set_result(ChunkResult(chunk, ChunkStatus.FAILED, error=error))
                return
            except BaseException as exc:  # noqa: BLE001 - the caller's result() raises it
                done.set_exception(exc)
                return
            self._pipeline.advance(result.read)  # the worker's progress, when its chunk ends
            done.set_result(result)

        task.add_done_callback(settle)
        return done

    def close(self) -> None:
        """Tasks still queued are cancelled; the plugin (and its connections) goes."""
        self._client.cancel(list(self._pending))
        self._client.unregister_worker_plugin(self._plugin)


def lanes(client: Any, settings: Settings) -> LanesFactory:
    """Chunks as tasks of ``client``'s cluster; each worker opens the store and loads the
    rules of ``settings`` (its log file, rules files, store, the cluster's download limit)."""
    return lambda pipeline: DaskLanes(pipeline, client, settings)
