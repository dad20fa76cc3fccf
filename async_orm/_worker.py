"""The thread boundary: worker threads, the worker pool, slots, and the hop.

This is the only module of async_orm that owns threads, queues and futures.
Everything else asks a :class:`Runner` to run a sync callable.

The model, in one paragraph: a *worker* is one daemon thread reading
``_Item`` objects from a ``queue.SimpleQueue`` and running them in FIFO order,
each under a copy of the submitter's ``contextvars`` context.  It hands the
outcome back with one ``loop.call_soon_threadsafe`` to the loop that awaited
the call, so a worker belongs to no event loop.  A *runner* is what a session
(or connection) holds: on its first call it takes a *slot* from its engine's
:class:`Limiter` (awaiting one on the event loop when all are taken) and then
a worker from the process-wide :class:`WorkerPool`; every later call of that
owner runs on that one thread until the runner is released.

Cancellation policy, decided once here: a cancelled call that has not started
is dropped; one that is running is interrupted through the owner's
``interrupt`` hook (called on a helper thread, never on the loop), waited for,
and the ``CancelledError`` re-raised.  ``run_shielded`` calls (closing) are
never dropped nor interrupted: the caller waits for them, then re-raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from queue import Empty, SimpleQueue
from typing import Any, Final, TypeVar

from . import exc

_T = TypeVar("_T")
_log = logging.getLogger("async_orm")

_get_ident = threading.get_ident
_get_running_loop = asyncio.get_running_loop
_copy_context = contextvars.copy_context

# Item states.  Transitions happen under the item's worker lock.
_QUEUED: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2
_DROPPED: Final = 3

_thread_counter = itertools.count(1)

#: Set (in the call's own context) while a ``run_sync`` function of a runner runs,
#: so that awaiting that same runner from inside it fails instead of deadlocking.
_inside_runner: contextvars.ContextVar[Runner | None] = contextvars.ContextVar(
    "async_orm_inside_runner", default=None
)


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Runs on the awaiting loop: settle ``fut`` unless it was cancelled."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Item:
    __slots__ = ("args", "context", "fn", "future", "loop", "state", "waiter")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.context = context
        self.loop = loop
        self.future = future
        self.state = _QUEUED
        self.waiter: asyncio.Future[None] | None = None


_STOP: Final = object()

#: per thread: the Worker a worker thread is (absent on other threads)
_current = threading.local()


def calling_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop whose task awaits the call running on this thread, when this
    thread is an async_orm worker running an awaited call; otherwise None."""
    worker: Worker | None = getattr(_current, "worker", None)
    return worker.current_loop if worker is not None else None


class Worker:
    """One daemon thread running submitted items in FIFO order."""

    __slots__ = ("_queue", "current_loop", "ident", "interrupt_lock", "lock", "name", "pool", "thread")

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        #: held by the canceller while it interrupts this worker's running call; the
        #: worker takes it before finishing a call, so an interrupt can never land
        #: on a later one (the event loop thread never touches this lock)
        self.interrupt_lock = threading.Lock()
        self._queue: SimpleQueue[_Item | object] = SimpleQueue()
        #: the event loop awaiting the call this worker is running (None between calls)
        self.current_loop: asyncio.AbstractEventLoop | None = None
        self.name = f"async_orm-worker-{next(_thread_counter)}"
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()
        self.ident: int = self.thread.ident or 0

    def put(self, item: _Item) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(_STOP)

    def _main(self) -> None:
        get = self._queue.get
        lock = self.lock
        interrupt_lock = self.interrupt_lock
        pool = self.pool
        while True:
            try:
                item = get(timeout=pool.idle_timeout)
            except Empty:
                if pool._retire(self):
                    return
                continue
            if item is _STOP:
                return
            assert isinstance(item, _Item)
            with lock:
                if item.state == _DROPPED:
                    continue
                item.state = _RUNNING
            ok = True
            self.current_loop = item.loop
            _current.worker = self
            try:
                value = item.context.run(item.fn, *item.args)
            except BaseException as error:  # handed to the awaiting task as is
                ok = False
                value = error
                if isinstance(error, StopIteration):
                    # asyncio futures refuse StopIteration; keep the original as cause.
                    value = RuntimeError(f"run_sync function raised StopIteration: {error!r}")
                    value.__cause__ = error
            self.current_loop = None
            with interrupt_lock, lock:
                item.state = _DONE
                waiter = item.waiter
            loop = item.loop
            if loop is not None:  # None: fire-and-forget, which handles its own errors
                try:
                    if item.future is not None:
                        loop.call_soon_threadsafe(_resolve, item.future, ok, value)
                    if waiter is not None:
                        loop.call_soon_threadsafe(_resolve, waiter, True, None)
                except RuntimeError:
                    pass  # the awaiting loop has closed; nobody is left to tell
            # drop references before blocking on the next get()
            del item, value, waiter, loop


class WorkerPool:
    """Process-wide pool of idle workers.

    Idle workers are reused (starting a thread per session is measurable cost);
    one idle for ``idle_timeout`` seconds retires, and no more than ``max_idle``
    are kept.  The pool does not bound the number of busy workers: slots
    (:class:`Limiter`) do that, before a worker is taken.
    """

    def __init__(self, max_idle: int = 64, idle_timeout: float = 30.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._alive: set[Worker] = set()

    def checkout(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = Worker(self)
        with self._lock:
            self._alive.add(worker)
        return worker

    def checkin(self, worker: Worker) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(worker)
                return
            self._alive.discard(worker)
        worker.stop()

    def _retire(self, worker: Worker) -> bool:
        """Called by an idle worker whose wait timed out: leave if still idle."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                self._alive.discard(worker)
                return True
        return False

    def configure(self, *, max_idle: int | None = None, idle_timeout: float | None = None) -> None:
        """Change the idle policy; extra idle workers beyond ``max_idle`` stop now."""
        surplus: list[Worker] = []
        with self._lock:
            if max_idle is not None:
                self.max_idle = max_idle
                while len(self._idle) > max_idle:
                    surplus.append(self._idle.pop(0))
                    self._alive.discard(surplus[-1])
            if idle_timeout is not None:
                self.idle_timeout = idle_timeout
        for worker in surplus:
            worker.stop()

    def stats(self) -> dict[str, int]:
        """Counts of worker threads: ``alive`` (idle + busy), ``idle`` and ``busy``."""
        with self._lock:
            alive = len(self._alive)
            idle = len(self._idle)
        return {"alive": alive, "idle": idle, "busy": alive - idle}

    def shrink(self) -> None:
        """Stop every idle worker now (tests and ``dispose``-like clean-ups)."""
        with self._lock:
            idle, self._idle = self._idle, []
            for worker in idle:
                self._alive.discard(worker)
        for worker in idle:
            worker.stop()
        for worker in idle:
            worker.thread.join(timeout=5)


#: The process-wide pool.
pool = WorkerPool(
    max_idle=int(os.environ.get("ASYNC_ORM_MAX_IDLE_WORKERS", "64")),
    idle_timeout=float(os.environ.get("ASYNC_ORM_WORKER_IDLE_TIMEOUT", "30")),
)


_all_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()


def _grant(limiter: Limiter, fut: asyncio.Future[None]) -> None:
    """Runs on the waiter's loop: hand it the slot, or pass the slot on."""
    if fut.done():  # timed out or cancelled meanwhile: the slot is not theirs
        limiter.release()
    else:
        fut.set_result(None)


class Limiter:
    """Bounds the workers of one engine: a thread-safe, loop-agnostic semaphore.

    ``acquire`` takes a slot at once when one is free and otherwise waits on the
    caller's event loop (never blocking it) for up to ``timeout`` seconds.
    """

    def __init__(self, capacity: int, timeout: float, describe: str) -> None:
        if capacity < 1:
            raise ValueError(f"worker capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.timeout = timeout
        self.describe = describe
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        _all_limiters.add(self)

    @property
    def in_use(self) -> int:
        return self.capacity - self._free

    def try_acquire(self) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
        return False

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            loop = _get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            entry = (loop, fut)
            self._waiters.append(entry)
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            await fut
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass  # a grant is already on its way; _grant passes the slot on
            if fut.done() and not fut.cancelled():
                if fut.exception() is None:
                    self.release()  # granted as we were cancelled: pass it on
                    raise
                raise exc.WorkerSlotTimeout(
                    f"No worker slot for {self.describe} became free within "
                    f"{self.timeout:g} s: all {self.capacity} slots are held by open "
                    "sessions or connections. Close sessions promptly (async with), or "
                    "raise the capacity: create_async_engine(..., pool_size=..., "
                    "max_overflow=...) or max_workers=..., or wait longer with "
                    "worker_timeout=..."
                ) from None
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_grant, self, fut)
                    return
                except RuntimeError:
                    continue  # that loop is closed; try the next waiter
            self._free += 1


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Canceller:
    """A lazily started daemon thread that runs interrupt hooks off the loop.

    Interrupting a statement can itself be network I/O (psycopg sends a cancel
    request), which must not run on the event loop thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: SimpleQueue[tuple[Callable[[], None], _Item, Worker]] = SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, hook: Callable[[], None], item: _Item, worker: Worker) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="async_orm-canceller", daemon=True
                )
                self._thread.start()
        self._queue.put((hook, item, worker))

    def _main(self) -> None:
        # The interrupt can reach the driver just before the statement starts
        # (PostgreSQL then ignores it), so it is repeated while that same call
        # still runs, and never once it has finished (it could hit the next call).
        # Every pending interrupt gets one attempt per pass: one that cannot land
        # (SQLite waiting on a lock) must not delay the others.
        pending: list[list[Any]] = []  # [due, attempts, hook, item, worker]
        get = self._queue.get
        while True:
            timeout = None
            if pending:
                timeout = max(0.0, min(entry[0] for entry in pending) - time.monotonic())
            try:
                hook, item, worker = get(timeout=timeout)
            except Empty:
                pass
            else:
                pending.append([0.0, 0, hook, item, worker])
                continue  # take everything queued before the next pass
            now = time.monotonic()
            still: list[list[Any]] = []
            for entry in pending:
                due, attempts, hook, item, worker = entry
                if due > now:
                    still.append(entry)
                    continue
                if attempts >= _INTERRUPT_ATTEMPTS:
                    continue
                # holding interrupt_lock, the call cannot finish (and the worker
                # cannot start the next one) until the driver has the interrupt
                with worker.interrupt_lock:
                    with worker.lock:
                        running = item.state == _RUNNING
                    if not running:
                        continue
                    try:
                        hook()
                    except BaseException:  # nothing may kill this thread
                        _log.warning(
                            "async_orm could not interrupt a running statement; the "
                            "cancelled call will finish on its own",
                            exc_info=True,
                        )
                        continue
                entry[0] = time.monotonic() + _INTERRUPT_INTERVAL
                entry[1] = attempts + 1
                still.append(entry)
            pending = still


#: how often, and how far apart, an interrupt is repeated while the call still runs
_INTERRUPT_ATTEMPTS = 50
_INTERRUPT_INTERVAL = 0.1

_canceller = _Canceller()


async def _wait_for_worker(fut: asyncio.Future[Any]) -> None:
    """Wait until ``fut`` is settled, absorbing further cancellations."""
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            continue
        except BaseException:
            return


class Runner:
    """The sync-call queue of one owner (an AsyncSession or AsyncConnection).

    Holds a slot and a worker from its first call until :meth:`release`.
    ``interrupt(thread_ident)`` is called (off the loop) to stop the statement
    running on the worker when an awaiting task is cancelled.
    """

    __slots__ = (
        "__weakref__",
        "_deferred_error",
        "_loop",
        "_pending",
        "_posted",
        "_posted_done",
        "_starting",
        "finalizer",
        "interrupt",
        "interrupted",
        "limiter",
        "owner_name",
        "worker",
    )

    def __init__(
        self,
        limiter: Limiter,
        interrupt: Callable[[int], None] | None = None,
        owner_name: str = "AsyncSession",
    ) -> None:
        self.limiter = limiter
        self.interrupt = interrupt
        self.owner_name = owner_name
        self.worker: Worker | None = None
        self.finalizer: Callable[[], None] | None = None
        #: set when a call was cancelled while running: the owner's state is unknown
        self.interrupted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        # fire-and-forget items: counted by the poster and by the worker (one writer each)
        self._posted = 0
        self._posted_done = 0
        self._starting: asyncio.Future[None] | None = None
        self._deferred_error: BaseException | None = None

    # -- state -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True when no call of this owner is queued or running."""
        return self._pending == 0 and self._posted == self._posted_done

    @property
    def thread_ident(self) -> int | None:
        worker = self.worker
        return worker.ident if worker is not None else None

    def on_own_thread(self) -> bool:
        worker = self.worker
        return worker is not None and worker.ident == _get_ident()

    # -- acquiring and releasing -----------------------------------------------

    async def _start(self) -> Worker:
        starting = self._starting
        if starting is not None:
            await asyncio.shield(starting)
            assert self.worker is not None
            return self.worker
        loop = _get_running_loop()
        starting = self._starting = loop.create_future()
        acquired = False
        try:
            if not self.limiter.try_acquire():
                await self.limiter.acquire()
            acquired = True
            worker = self.worker = pool.checkout()
        except BaseException as error:
            if acquired:
                self.limiter.release()
            starting.set_exception(error)
            starting.exception()  # mark retrieved: the raiser below reports it
            raise
        finally:
            self._starting = None
        starting.set_result(None)
        return worker

    def release(self) -> None:
        """Give the worker back to the pool and the slot back to the engine."""
        worker = self.worker
        if worker is None:
            return
        self.worker = None
        self._loop = None
        pool.checkin(worker)
        self.limiter.release()

    def __del__(self) -> None:
        worker = self.worker
        if worker is None:
            return
        self.worker = None
        finalizer = self.finalizer
        limiter = self.limiter

        def close_and_return() -> None:
            try:
                if finalizer is not None:
                    finalizer()
            finally:
                pool.checkin(worker)
                limiter.release()

        # queue the close first: with warnings turned into errors, warn() raises
        worker.put(_Item(close_and_return, (), contextvars.Context(), None, None))
        warnings.warn(
            f"{self.owner_name} was garbage-collected without being closed; async_orm "
            "closed it on its worker thread. Close it with 'async with' or 'await "
            f"{self.owner_name.lower()}.close()'.",
            ResourceWarning,
            stacklevel=2,
        )

    # -- calls -----------------------------------------------------------------

    def _reentrant_error(self) -> exc.ReentrantCallError:
        return exc.ReentrantCallError(
            f"The {self.owner_name}'s own async API was called from inside its "
            "run_sync() function, which runs on the worker thread that would have "
            "to serve the call: it would deadlock. Inside run_sync, use the sync "
            "Session/Connection passed to your function instead."
        )

    def _check_call(self, loop: asyncio.AbstractEventLoop) -> None:
        if _inside_runner.get() is self:
            raise self._reentrant_error()
        if self._pending and self._loop is not loop:
            raise exc.CrossLoopError(
                f"This {self.owner_name} has calls in flight from another event loop "
                f"(loop at {id(self._loop):#x}) and cannot be used from this one (loop at "
                f"{id(loop):#x}, thread {threading.current_thread().name!r}) at the same "
                "time. Use one session per event loop (e.g. one per thread or per "
                "asyncio.run()), or wait for the other loop's calls to finish."
            )
        error = self._deferred_error
        if error is not None:
            self._deferred_error = None
            raise error

    async def run(self, fn: Callable[..., _T], /, *args: Any) -> _T:
        """Run ``fn(*args)`` on this owner's worker and return its result."""
        worker = self.worker
        if worker is None:
            worker = await self._start()
        elif worker.ident == _get_ident():
            if _inside_runner.get() is self:
                raise self._reentrant_error()
            return fn(*args)
        loop, fut, item = self._submit(worker, fn, args)
        try:
            return await fut  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if fut.cancelled():
                await self._cancelled(worker, item, loop)
            raise
        finally:
            self._pending -= 1

    def _submit(
        self, worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], _Item]:
        """Queue ``fn(*args)`` on ``worker`` for the running loop: the hop's first half."""
        loop = _get_running_loop()
        self._check_call(loop)
        fut: asyncio.Future[Any] = loop.create_future()
        item = _Item(fn, args, _copy_context(), loop, fut)
        self._loop = loop
        self._pending += 1
        worker.put(item)
        return loop, fut, item

    async def _cancelled(
        self, worker: Worker, item: _Item, loop: asyncio.AbstractEventLoop
    ) -> None:
        with worker.lock:
            state = item.state
            if state == _QUEUED:
                item.state = _DROPPED
                return
            if state != _RUNNING:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            item.waiter = waiter
        self.interrupted = True
        hook = self.interrupt
        if hook is not None:
            ident = worker.ident
            _canceller.submit(lambda: hook(ident), item, worker)
        await _wait_for_worker(waiter)

    async def run_shielded(self, fn: Callable[..., _T], /, *args: Any) -> _T:
        """Like :meth:`run`, but a cancellation neither drops nor interrupts the call:
        the caller waits for it to finish, then the ``CancelledError`` is re-raised."""
        worker = self.worker
        if worker is None:
            worker = await self._start()
        elif worker.ident == _get_ident():
            return fn(*args)
        _, fut, _ = self._submit(worker, fn, args)
        cancelled = False
        try:
            while True:
                try:
                    result = await asyncio.shield(fut)
                    break
                except asyncio.CancelledError:
                    if fut.done():
                        raise
                    cancelled = True
        finally:
            self._pending -= 1
        if cancelled:
            raise asyncio.CancelledError()
        return result  # type: ignore[no-any-return]

    def run_marked(self, fn: Callable[..., _T], /, *args: Any) -> Coroutine[Any, Any, _T]:
        """Like :meth:`run`, for user code (``run_sync``): awaiting this same runner
        from inside ``fn`` raises :class:`~async_orm.exc.ReentrantCallError`."""
        return self.run(self._marked, fn, *args)

    def _marked(self, fn: Callable[..., _T], *args: Any) -> _T:
        token = _inside_runner.set(self)
        try:
            return fn(*args)
        finally:
            _inside_runner.reset(token)

    @property
    def runs_inline(self) -> bool:
        """True when :meth:`post` would run its function at once, on the calling
        thread: no worker yet, called from the worker itself, or nothing in flight."""
        worker = self.worker
        return worker is None or worker.ident == _get_ident() or self.idle

    def post(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Queue ``fn(*args)`` behind the calls in flight, without awaiting it.

        For the sync, fire-and-forget methods (``add``, ``expunge``, ...) called
        while the worker is busy: they keep their place in the order.  An error
        is raised by this owner's next awaited call.
        """
        if self.runs_inline:
            fn(*args)
            return
        worker = self.worker
        assert worker is not None  # runs_inline holds without one
        self._posted += 1
        worker.put(_Item(self._run_posted, (fn, args), _copy_context(), None, None))

    def _run_posted(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as error:
            self._deferred_error = error
        finally:
            self._posted_done += 1


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: forget the parent's
    workers, canceller and slot holders, so the child starts fresh."""
    pool._lock = threading.Lock()
    pool._idle = []
    pool._alive = set()
    _canceller._lock = threading.Lock()
    _canceller._queue = SimpleQueue()
    _canceller._thread = None
    for limiter in list(_all_limiters):
        limiter._lock = threading.Lock()
        limiter._waiters.clear()
        limiter._free = limiter.capacity


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def default_capacity() -> int:
    """Slots for engines whose pool has no upper bound (NullPool, overflow -1)."""
    return int(os.environ.get("ASYNC_ORM_MAX_WORKERS", "32"))
