"""The thread boundary: worker threads, slots, the hop, and each owner's state.

This module (with :mod:`async_orm._interrupt`, which knows how to interrupt a
driver) is the only part of async_orm that owns threads, queues, futures and
locks.  Everything else asks a :class:`Runner` to run a sync callable, naming the
call's :class:`Kind`; the runner derives every policy from that kind and from its
one :class:`State`.

The model:

* A *worker* is one daemon thread (``async_orm-worker-N``) running :class:`_Call`
  objects from a ``queue.SimpleQueue`` in FIFO order, each under a copy of the
  submitter's ``contextvars`` context.  It hands the outcome back through the
  awaiting event loop's own thread-safe door (asyncio's
  ``loop.call_soon_threadsafe``, Trio's ``TrioToken.run_sync_soon``), chosen per
  call, so a worker belongs to no event loop.
* A *runner* is what an owner (an AsyncSession or AsyncConnection) holds.  Its
  lifecycle is one :class:`State`::

      IDLE --first call--> ACQUIRING --slot + worker--> ACTIVE <--------------+
                                                          |  a running call  |
                                                          |  is cancelled    | root rollback
                                                          v                  |
                                                   NEEDS_ROLLBACK -----------+
                                                          |  its worker does not come back
                                                          v  within GRACE seconds
                                                        FENCED --call returns--> NEEDS_ROLLBACK
      any state with a worker --close()--> CLOSING --done--> IDLE (session) / CLOSED (connection)

* A *slot* bounds the threads and connections of one engine (:class:`Limiter`,
  one per pool, sized like the pool).  A runner takes its home slot on the event
  loop before it takes a worker; a checkout from another engine's pool (a session
  with several binds) takes a slot of that engine on the worker first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import enum
import itertools
import logging
import os
import sys
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from sqlalchemy import exc as sa_exc
from typing_extensions import TypeVarTuple, Unpack

from . import _guard, _interrupt, _sa_compat, exc

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import Pool

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_log = logging.getLogger("async_orm")

_get_ident = threading.get_ident
_get_running_loop = _sa_compat.get_running_loop
_copy_context = contextvars.copy_context
_modules = sys.modules
_CancelledError = asyncio.CancelledError

#: seconds a cancelled task waits for its call to come back before leaving it fenced
GRACE: Final = 0.75
#: seconds a session waits for a slot when neither worker_timeout nor the pool says
DEFAULT_WORKER_TIMEOUT: Final = 30.0


# --------------------------------------------------------------------------
# call kinds: the policy table


@dataclass(frozen=True)
class Kind:
    """What a call is, and so what the runner does with it."""

    name: str
    #: refused while the owner needs a rollback after a cancelled call
    refused_after_cancel: bool = False
    #: cancelled while running: interrupt it at the driver; the owner needs a rollback
    interruptible: bool = False
    #: a cancellation neither drops nor interrupts it; the caller waits for it (GRACE)
    shielded: bool = False
    #: success ends the after-cancel state (a root rollback, a close)
    clears: bool = False
    #: gives the worker and the slots back when done
    ends: bool = False
    #: user code (run_sync): awaiting the same owner from inside it is refused
    user: bool = False
    #: its result holds a cursor or connection: closed if nobody receives it
    closes_unreceived: bool = False
    #: a connection-free sync step (add, expunge, expire): not awaited
    local: bool = False
    #: an END that runs in place when nothing is in flight (it touches no connection)
    in_place_when_idle: bool = False
    #: a LOCAL step given ORM instances: checked at once when the step is queued,
    #: so that an unmapped object fails in the call, not in a later one
    checks_instances: bool = False
    #: an END that takes a worker first even when none is held (engine-level work)
    acquires: bool = False
    #: neither local nor user code: :meth:`Runner.run` goes straight to the worker
    direct: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direct", not (self.local or self.user))


@dataclass(frozen=True)
class LocalKind(Kind):
    """A connection-free sync step: :meth:`Runner.run` returns its result."""


STATEMENT: Final = Kind("statement", refused_after_cancel=True, interruptible=True)
STREAM: Final = Kind(
    "stream", refused_after_cancel=True, interruptible=True, closes_unreceived=True
)
CONNECT: Final = Kind(
    "connect", refused_after_cancel=True, interruptible=True, closes_unreceived=True
)
USER: Final = Kind("run_sync", refused_after_cancel=True, interruptible=True, user=True)
ROLLBACK: Final = Kind("rollback", shielded=True, clears=True)
SAVEPOINT_ROLLBACK: Final = Kind("savepoint rollback", shielded=True)
COMMIT_EXIT: Final = Kind("commit at block exit", shielded=True)
END: Final = Kind("close", shielded=True, clears=True, ends=True)
END_QUIET: Final = Kind(
    "close (no transaction)", shielded=True, clears=True, ends=True, in_place_when_idle=True
)
DETACHED: Final = Kind("engine work", shielded=True, ends=True, acquires=True)
LOCAL: Final = LocalKind("local step", local=True)
LOCAL_ADD: Final = LocalKind("add", local=True, checks_instances=True)


class State(enum.Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring a slot"
    ACTIVE = "active"
    NEEDS_ROLLBACK = "needs a rollback after a cancelled call"
    FENCED = "fenced: a cancelled call has not come back from the database"
    CLOSING = "closing"
    CLOSED = "closed"


_IDLE = State.IDLE
_ACTIVE = State.ACTIVE
_NEEDS_ROLLBACK = State.NEEDS_ROLLBACK
_FENCED = State.FENCED
_CLOSING = State.CLOSING
_CLOSED = State.CLOSED
_WITH_WORKER = (State.ACTIVE, State.NEEDS_ROLLBACK, State.FENCED, State.CLOSING)


# --------------------------------------------------------------------------
# event-loop libraries: the hand-back, one function per library


_trio_lowlevel = _guard.trio_running


def _no_loop_error() -> RuntimeError:
    return RuntimeError(
        "async_orm's awaitables must be awaited in a running asyncio event loop or Trio "
        "run; none is running in this thread."
    )


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """On the awaiting asyncio loop: settle ``fut`` unless it was cancelled."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Signal:
    """One task waiting for something another thread does (a slot, a worker coming
    back, a close finishing), on asyncio or Trio."""

    __slots__ = ("_event", "_expired", "_fut", "_loop", "_token")

    def __init__(self) -> None:
        self._expired = False
        loop = _get_running_loop()
        self._loop = loop
        if loop is not None:
            self._fut: asyncio.Future[None] | None = loop.create_future()
            self._token: Any = None
            return
        lowlevel = _trio_lowlevel()
        if lowlevel is None:
            raise _no_loop_error()
        import trio

        self._fut = None
        self._event = trio.Event()
        self._token = lowlevel.current_trio_token()

    def wake(self) -> bool:
        """From any thread; False when the waiting loop is gone."""
        try:
            loop = self._loop
            if loop is not None:
                if loop is _get_running_loop():
                    self._set_asyncio()  # on the loop's own thread: no wake-up needed
                else:
                    loop.call_soon_threadsafe(self._set_asyncio)
            else:
                self._token.run_sync_soon(self._event.set)
        except RuntimeError:  # asyncio: loop closed; trio: RunFinishedError
            return False
        return True

    def _set_asyncio(self) -> None:
        fut = self._fut
        assert fut is not None
        if not fut.done():
            fut.set_result(None)

    @property
    def woken(self) -> bool:
        if self._fut is not None:
            return self._fut.done() and not self._fut.cancelled()
        return bool(self._event.is_set())

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (cancellably) until woken; False when ``timeout`` ran out first."""
        if self._fut is not None:
            if timeout is None:
                await self._fut
                return True
            timer = self._loop.call_later(timeout, self._expire)  # type: ignore[union-attr]
            try:
                await self._fut
            finally:
                timer.cancel()
            return not self._expired
        import trio

        with trio.move_on_after(float("inf") if timeout is None else timeout):
            await self._event.wait()
        return bool(self._event.is_set())

    def _expire(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            self._expired = True
            fut.set_result(None)

    async def wait_shielded(self, timeout: float) -> bool:
        """Wait until woken or ``timeout``, absorbing cancellations meanwhile; False
        when ``timeout`` ran out first."""
        if self._fut is not None:
            loop = self._loop
            assert loop is not None
            deadline = loop.time() + timeout
            while not self._fut.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(self._fut), remaining)
                except _CancelledError:
                    continue  # absorbed: the caller re-raises its own
                except (asyncio.TimeoutError, TimeoutError):
                    break
            return self._fut.done()
        import trio

        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self._event.wait()
        return bool(self._event.is_set())

    def is_cancel(self, error: BaseException) -> bool:
        """Is ``error`` this loop library's cancellation?"""
        if self._fut is not None:
            return isinstance(error, _CancelledError)
        import trio

        return isinstance(error, trio.Cancelled)


# --------------------------------------------------------------------------
# calls and workers

# call states; changed under the call's worker lock
_QUEUED: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2
_DROPPED: Final = 3


class _Call:
    """One sync call on its way to a worker and back."""

    __slots__ = (
        "args",
        "context",
        "cpu",
        "fn",
        "future",
        "kind",
        "kw",
        "loop",
        "ok",
        "received",
        "runner",
        "signal",
        "state",
        "value",
        "watcher",
    )

    # Set only where they apply, and read only there, so that the common call does not
    # pay for them (an annotation in __init__ would cost bytecodes per call):
    #: Trio, a sync hand-off: how the outcome is told (a received call without a loop
    #: has one; the worker sets ``ok`` and ``value`` before it wakes it)
    signal: Any
    ok: bool
    value: Any
    #: the CPU the worker runs this call on (set by the caller while placement is on)
    cpu: int | None

    def __init__(
        self,
        runner: Runner | None,
        kind: Kind,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any] | None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        self.runner = runner
        self.kind = kind
        self.fn = fn
        self.args = args
        self.kw = kw
        self.context = _copy_context()
        self.state = _QUEUED
        #: asyncio: the awaiting loop and its future
        self.loop = loop
        self.future = future
        #: False once the awaiter has given up, or for a call nobody awaits: the worker
        #: then cleans up the outcome (and wakes ``watcher``, if one was set)
        self.received = True
        #: a cancelled awaiter waiting for the worker to come back
        self.watcher: _Signal | None = None


#: tells a worker to stop (never run; an empty context, so that it pins nothing of
#: the context the module happened to be imported in)
_STOP: Final = _Call(None, END, lambda: None, (), None)
_STOP.context = contextvars.Context()
_thread_counter = itertools.count(1)

#: thread ident -> the Worker running on that thread (its ``call``: the one it runs)
_workers: dict[int, Worker] = {}

#: set, in the call's own context, while a run_sync function of a runner runs
_inside_runner: contextvars.ContextVar[Runner | None] = contextvars.ContextVar(
    "async_orm_inside_runner", default=None
)


def calling_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop whose task awaits the call running on this thread, when this
    thread is an async_orm worker running an awaited call; otherwise None."""
    call = _current_call()
    return call.loop if call is not None else None


def _current_call() -> _Call | None:
    """The call this thread runs, when it is an async_orm worker running one."""
    worker = _workers.get(_get_ident())
    return worker.call if worker is not None else None


class Worker:
    """One daemon thread running calls in FIFO order."""

    __slots__ = (
        "_queue",
        "call",
        "cpu",
        "ident",
        "interrupt_lock",
        "lock",
        "name",
        "pool",
        "put",
        "thread",
    )

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        #: held while an interrupt is sent to this worker's running call; the worker
        #: takes it before finishing a call, so an interrupt never lands on the next
        self.interrupt_lock = threading.Lock()
        self._queue: SimpleQueue[_Call] = SimpleQueue()
        #: queue a call (the queue's own put: no Python frame on the hot path)
        self.put = self._queue.put
        #: the CPU this thread is placed on (see configure()), None: the process's set
        self.cpu: int | None = None
        #: the call this thread is running, None between calls
        self.call: _Call | None = None
        self.name = f"async_orm-worker-{next(_thread_counter)}"
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()
        self.ident: int = self.thread.ident or 0

    def stop(self) -> None:
        self._queue.put(_STOP)

    def _main(self) -> None:
        ident = _get_ident()
        _workers[ident] = self
        try:
            self._serve()
        finally:
            _workers.pop(ident, None)

    def _serve(self) -> None:
        get = self._queue.get
        # the lock is taken with acquire()/release(): half the cost of 'with'
        acquire, release = self.lock.acquire, self.lock.release
        pool = self.pool
        while True:
            try:
                call = get(timeout=pool.idle_timeout)
            except Empty:
                if pool._retire(self):
                    return
                continue
            if call is _STOP:
                return
            acquire()
            try:
                if call.state == _DROPPED:
                    continue
                call.state = _RUNNING
            finally:
                release()
            self.call = call
            if _placement.engaged:
                _placement.follow(self, call)
            ok = True
            try:
                kw = call.kw
                if kw:
                    value = call.context.run(call.fn, *call.args, **kw)
                else:
                    value = call.context.run(call.fn, *call.args)
            except BaseException as error:  # handed to the awaiting task as is
                ok = False
                value = error
                if isinstance(error, StopIteration):
                    # asyncio futures refuse StopIteration; keep the original as cause
                    value = RuntimeError(f"run_sync function raised StopIteration: {error!r}")
                    value.__cause__ = error
                elif type(error) is RuntimeError and error.args == ("no running event loop",):
                    value = RuntimeError(_NO_LOOP_ON_WORKER.format(name=self.name))
                    value.__cause__ = error
            self.call = None
            acquire()
            try:
                # received: no interrupt was started for this call (_cancelled() marks
                # it unreceived under this lock first), so none can be in flight
                received = call.received
                if received:
                    call.state = _DONE
            finally:
                release()
            if received:
                if call.runner._after:  # type: ignore[union-attr]  # (received: a runner's)
                    call.runner._finished(call, ok, value, True)  # type: ignore[union-attr]
                loop = call.loop
                try:
                    if loop is not None:
                        loop.call_soon_threadsafe(_resolve, call.future, ok, value)  # type: ignore[arg-type]
                    else:
                        call.ok = ok
                        call.value = value
                        call.signal.wake()
                except RuntimeError:
                    pass  # the awaiting loop has closed; nobody is left to tell
            else:
                self._end_unreceived(call, ok, value)
            # drop references before blocking on the next get()
            del call, value

    def _end_unreceived(self, call: _Call, ok: bool, value: Any) -> None:
        """The end of a call whose awaiter has given up, or that nobody awaits."""
        # an interrupt being sent holds interrupt_lock: the call finishes after it,
        # never with one on its way to the next call
        with self.interrupt_lock, self.lock:
            call.state = _DONE
        runner = call.runner
        if runner is not None:
            runner._finished(call, ok, value, False)
        watcher = call.watcher
        if watcher is not None:
            watcher.wake()


def _run_user(runner: Runner, fn: Callable[..., Any], args: tuple[Any, ...], kw: Any) -> Any:
    token = _inside_runner.set(runner)
    try:
        return fn(*args, **kw) if kw else fn(*args)
    finally:
        _inside_runner.reset(token)


class _SyncHandoff:
    """Wakes a thread blocked in a synchronous hand-off (a LOCAL step)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()


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
        lock = self._lock
        lock.acquire()  # (not 'with': this is on every session's path)
        try:
            if self._idle:
                return self._idle.pop()
        finally:
            lock.release()
        worker = Worker(self)
        with self._lock:
            self._alive.add(worker)
        return worker

    def checkin(self, worker: Worker) -> None:
        lock = self._lock
        lock.acquire()
        try:
            if len(self._idle) < self.max_idle:
                self._idle.append(worker)
                return
            self._alive.discard(worker)
        finally:
            lock.release()
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


def default_capacity() -> int:
    """Slots for engines whose pool has no upper bound (NullPool, overflow -1)."""
    return int(os.environ.get("ASYNC_ORM_MAX_WORKERS", "32"))


# --------------------------------------------------------------------------
# slots


class _Request:
    """A place in a Limiter's queue: a runner waiting on a loop, or a worker thread
    waiting for another engine's slot."""

    __slots__ = ("_event", "_on_grant", "cancelled", "granted")

    def __init__(self, on_grant: Callable[[], bool] | None = None) -> None:
        self._on_grant = on_grant
        self._event = threading.Event() if on_grant is None else None
        self.granted = False
        self.cancelled = False

    def grant(self) -> bool:
        """Hand the slot over; False when the requester no longer wants it."""
        if self._on_grant is not None:
            return self._on_grant()
        if self.cancelled:
            return False
        self.granted = True
        assert self._event is not None
        self._event.set()
        return True

    def wait_blocking(self, timeout: float | None) -> bool:
        assert self._event is not None
        self._event.wait(timeout)
        return self.granted

    def cancel(self) -> None:
        self.cancelled = True
        if self._event is not None:
            self._event.set()


_all_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()


class Limiter:
    """The worker slots of one engine: a thread-safe, loop-agnostic semaphore.

    ``timeout`` is how long a session waits for a slot (``None``: as long as it
    takes).  Waiting happens on the event loop for a runner's home slot and on the
    worker thread for a further engine's slot; both queue in one FIFO.
    """

    def __init__(self, capacity: int, timeout: float | None, describe: str) -> None:
        if capacity < 1:
            raise ValueError(f"worker capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.timeout = timeout
        self.describe = describe
        self._free = capacity
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        _all_limiters.add(self)

    @property
    def in_use(self) -> int:
        return self.capacity - self._free

    def try_acquire(self) -> bool:
        lock = self._lock
        lock.acquire()  # (not 'with': this is on every session's path)
        try:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return True
        finally:
            lock.release()
        return False

    def enqueue(self, request: _Request) -> bool:
        """Take a slot at once (True) or queue ``request`` for one (False)."""
        lock = self._lock
        lock.acquire()  # (not 'with': this is on the path of every session that waits)
        try:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return True
            self._queue.append(request)
        finally:
            lock.release()
        return False

    def withdraw(self, request: _Request) -> bool:
        """Leave the queue; False when the request was already granted (or being)."""
        with self._lock:
            try:
                self._queue.remove(request)
            except ValueError:
                return False
        return True

    def acquire_blocking(self, request: _Request) -> None:
        """On a worker thread: wait for a slot (``request`` may be cancelled)."""
        if self.enqueue(request):
            request.granted = True
            return
        if request.wait_blocking(self.timeout):
            return
        if not self.withdraw(request) and request.granted:
            return  # granted as we gave up: keep it
        if request.cancelled:
            raise _CancelledError()
        raise self.timeout_error()

    def release(self, count: int = 1) -> None:
        lock = self._lock
        for _ in range(count):
            while True:
                lock.acquire()  # (not 'with': this is on every session's path)
                try:
                    if not self._queue:
                        self._free += 1
                        break
                    request = self._queue.popleft()
                finally:
                    lock.release()
                if request.grant():
                    break

    def timeout_error(self) -> exc.WorkerSlotTimeout:
        return exc.WorkerSlotTimeout(
            f"No worker slot for {self.describe} became free within {self.timeout:g} s: "
            f"all {self.capacity} slots are held by open sessions or connections. Close "
            "sessions promptly (async with), or raise the capacity: create_async_engine(..., "
            "pool_size=..., max_overflow=...) or max_workers=..., or wait longer with "
            "pool_timeout=... / worker_timeout=..."
        )


#: a pool's Limiter is kept in the pool's own ``__dict__`` under this name (one
#: dict lookup, no weak-key registry to hash a new weak reference on every look-up)
_LIMITER: Final = "_async_orm_limiter"
_limiters_lock = threading.Lock()


def _limiter_of(pool_: Pool) -> Limiter | None:
    limiter: Limiter | None = pool_.__dict__.get(_LIMITER)
    return limiter


def _coerce_timeout(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise sa_exc.ArgumentError(
            f"{name} must be a number of seconds or None, not {value!r}"
        ) from None
    if timeout < 0:
        raise sa_exc.ArgumentError(f"{name} must not be negative, not {value!r}")
    return timeout


def _coerce_capacity(value: Any) -> int:
    try:
        capacity = int(value)
        whole = capacity >= 1 and capacity == float(value)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise sa_exc.ArgumentError(
            f"max_workers must be a whole number of at least 1, not {value!r}"
        )
    return capacity


_UNSET: Final = object()


def limiter_for(
    sync_engine: Engine, max_workers: Any = None, worker_timeout: Any = _UNSET
) -> Limiter:
    """The slots of ``sync_engine``'s pool (one Limiter per pool, shared by the
    engine's ``execution_options()`` copies).  The wait defaults to the pool's own
    ``pool_timeout`` (``None`` waits as long as it takes)."""
    if max_workers is None and worker_timeout is _UNSET:
        found = _limiter_of(sync_engine.pool)  # the common case: no lock
        if found is not None:
            return found
    capacity = None if max_workers is None else _coerce_capacity(max_workers)
    timeout_given = worker_timeout is not _UNSET and worker_timeout is not None
    timeout = _coerce_timeout(worker_timeout, "worker_timeout") if timeout_given else None
    pool_ = sync_engine.pool
    with _limiters_lock:
        limiter = _limiter_of(pool_)
        if limiter is None:
            if capacity is None:
                capacity = _sa_compat.pool_capacity(pool_) or default_capacity()
            if not timeout_given:
                own = _sa_compat.pool_timeout(pool_)
                timeout = DEFAULT_WORKER_TIMEOUT if own is _sa_compat._NOT_GIVEN else own  # type: ignore[assignment]
            describe = (
                f"engine {sync_engine.url.render_as_string(hide_password=True)!r} "
                f"({type(pool_).__name__}, capacity {capacity})"
            )
            limiter = pool_.__dict__[_LIMITER] = Limiter(capacity, timeout, describe)
        else:
            if capacity is not None and capacity != limiter.capacity:
                raise sa_exc.ArgumentError(
                    f"This engine's pool already has {limiter.capacity} worker slots; "
                    "max_workers can only be given when the engine is first wrapped."
                )
            if timeout_given:
                limiter.timeout = timeout
    return limiter


_unbound_limiter = Limiter(default_capacity(), DEFAULT_WORKER_TIMEOUT, "sessions without a bind")
_several_binds_limiter = Limiter(
    default_capacity(), DEFAULT_WORKER_TIMEOUT, "sessions bound to several engines"
)


# --------------------------------------------------------------------------
# engines: checkouts go through the owner's slots and are known to its runner

_INSTRUMENTED: Final = "_async_orm_instrumented"
_DOORS: Final = "_async_orm_doors"
#: id(pool record) -> (runner, limiter) while one of a runner's calls holds it; the
#: runner weakly, so that a session dropped unclosed is still garbage-collected
_holders: dict[int, tuple[weakref.ref[Runner], Limiter | None]] = {}
_holders_lock = threading.Lock()
#: id(pool record) of connections a cancel request was sent to: the server may deliver
#: it late, so at checkin they are invalidated rather than handed to another owner
_interrupted: set[int] = set()


def instrument(sync_engine: Engine) -> None:
    """Prepare an engine once (idempotent): the Core loop guard, slots taken before
    each checkout made by an owner's call, and which owner holds which DBAPI
    connection (so that a cancellation interrupts only that owner's statement)."""
    if sync_engine.__dict__.get(_INSTRUMENTED):
        return
    sync_engine.__dict__[_INSTRUMENTED] = True
    _guard.guard_dialect(sync_engine.dialect)
    limiter_for(sync_engine)
    _wrap_doors(sync_engine.pool)
    # not an engine_disposed listener: any engine-level listener switches every
    # execution of the engine to SQLAlchemy's slower with-events path
    _sa_compat.override_methods(sync_engine, {"dispose": _disposing(sync_engine)})


def _disposing(sync_engine: Engine) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``dispose()`` makes a new pool: it keeps the old one's slots and its door."""
    ref = weakref.ref(sync_engine)  # the override lives in the engine: no cycle

    def make(dispose: Callable[..., Any]) -> Callable[..., Any]:
        def dispose_and_keep_the_door(*args: Any, **kw: Any) -> Any:
            engine = ref()
            assert engine is not None  # it is being called
            old = engine.pool
            try:
                return dispose(*args, **kw)
            finally:
                new = engine.pool
                with _limiters_lock:
                    limiter = _limiter_of(old)
                    if limiter is not None and _limiter_of(new) is None:
                        new.__dict__[_LIMITER] = limiter
                _wrap_doors(new)

        return dispose_and_keep_the_door

    return make


def _wrap_doors(pool_: Pool) -> None:
    _sa_compat.wrap_pool_doors(pool_, _before_checkout, _checked_out, _returning, _DOORS)


def _before_checkout(pool_: Pool) -> Runner | None:
    """Before every checkout of an instrumented pool, on the thread checking out:
    the loop guard, then the owner's slot.  Returns the owner, whose checkout
    :func:`_checked_out` records."""
    if (
        _get_running_loop() is not None
        or ("trio" in _modules and _guard.trio_running() is not None)
    ) and _guard.loop_io_refused():
        raise _guard.checkout_on_loop()
    call = _current_call()
    if call is None:
        return None  # not an owner's call: the application's own thread
    runner = call.runner
    if runner is None or runner._slotless:
        return None  # maintenance (a garbage-collected owner's close), or no slots
    limiter = pool_.__dict__.get(_LIMITER)
    if limiter is not None:
        runner._slot_for(limiter)
    return runner


def _checked_out(pool_: Pool, runner: Runner, record: Any, dbapi_connection: Any) -> None:
    key = id(record)
    limiter = pool_.__dict__.get(_LIMITER)
    holder = (weakref.ref(runner), limiter)
    lock = _holders_lock
    lock.acquire()  # (not 'with': this is on every session's path)
    try:
        _holders[key] = holder
        runner._connections[key] = dbapi_connection
        if limiter is not None:
            in_use = runner._in_use
            in_use[limiter] = in_use.get(limiter, 0) + 1
    finally:
        lock.release()


def _returning(record: Any) -> None:
    """A record goes back to its pool (checkin or detach), on the returning thread."""
    key = id(record)
    if _interrupted:
        with _holders_lock:
            interrupted = key in _interrupted
            _interrupted.discard(key)
        if interrupted:
            record.invalidate()  # a fresh connection for the next owner, on its checkout
    lock = _holders_lock
    lock.acquire()  # (not 'with': this is on every session's path)
    try:
        holder = _holders.pop(key, None)
        if holder is None:
            return
        ref, limiter = holder
        runner = ref()
        if runner is None:
            return
        runner._connections.pop(key, None)
        if limiter is not None and runner._in_use.get(limiter):
            runner._in_use[limiter] -= 1
    finally:
        lock.release()


def watch_binds(session: Session) -> None:
    """Make every engine ``session`` reaches (a ``get_bind()`` override, a
    ShardedSession's shards, a bind set later) instrumented before its first
    checkout."""

    def make(get_bind: Callable[..., Any]) -> Callable[..., Any]:
        def watched_get_bind(*args: Any, **kw: Any) -> Any:
            bind = get_bind(*args, **kw)
            engine = getattr(bind, "engine", None)
            if engine is not None and not engine.__dict__.get(_INSTRUMENTED):
                instrument(engine)
            return bind

        return watched_get_bind

    _sa_compat.override_methods(session, {"get_bind": make})


# --------------------------------------------------------------------------
# the runner: one owner's state and its one entry


class Runner:
    """The calls of one owner (an AsyncSession or AsyncConnection), its slots and
    worker, and its :class:`State`.  Every proxy method is one line::

        return await self._runner.run(STATEMENT, self.sync_session.get, entity, ident)
    """

    __slots__ = (
        "__weakref__",
        "_after",
        "_connections",
        "_deferred_error",
        "_end_signals",
        "_home",
        "_in_use",
        "_lock",
        "_loop",
        "_pending",
        "_posted",
        "_posted_done",
        "_request",
        "_reusable",
        "_slot_request",
        "_slotless",
        "_slots",
        "_start_signals",
        "_stuck",
        "_woken",
        "finalizer",
        "owner_name",
        "state",
        "worker",
    )

    def __init__(
        self,
        home: Limiter,
        owner_name: str = "AsyncSession",
        *,
        reusable: bool = True,
        slotless: bool = False,
    ) -> None:
        self._home = home
        self.owner_name = owner_name
        self._reusable = reusable
        #: maintenance runners (dispose, raw_connection) take no slot of the engine
        self._slotless = slotless
        self.state = State.IDLE
        self.worker: Worker | None = None
        self.finalizer: Callable[[], None] | None = None
        self._lock = threading.Lock()
        #: limiter -> slots held, and -> connections checked out
        self._slots: dict[Limiter, int] = {}
        self._in_use: dict[Limiter, int] = {}
        #: id(pool record) -> DBAPI connection, for interrupting this owner's statement
        self._connections: dict[int, Any] = {}
        self._loop: Any = None
        self._pending = 0  # awaited calls in flight (queued or running); loop side only
        #: calls queued without an awaiter: counted by the poster and by the worker
        self._posted = 0
        self._posted_done = 0
        self._request: _Request | None = None
        self._slot_request: _Request | None = None
        self._start_signals: list[_Signal] = []
        self._end_signals: list[_Signal] = []
        self._stuck: _Call | None = None
        self._deferred_error: BaseException | None = None
        #: True while a finished call needs _finished() on the worker
        self._after = False
        #: tasks woken by the grant of the home slot that have not yet gone on
        self._woken = 0

    # -- state ----------------------------------------------------------------------

    @property
    def needs_rollback(self) -> bool:
        return self.state in (_NEEDS_ROLLBACK, _FENCED)

    def _refusal(self) -> BaseException:
        """Why a statement cannot run in the current state (httpx style: from the state)."""
        owner = self.owner_name
        name = "session" if owner == "AsyncSession" else "conn"
        if self.state is _CLOSED:
            return sa_exc.ResourceClosedError(
                f"This {owner} is closed; get a new one from engine.connect()."
            )
        if self.state is _FENCED:
            return exc.RollbackRequiredAfterCancel(
                f"A call of this {owner} was cancelled while it was running and the "
                "database has not answered since: its connection is still busy with that "
                "call, so nothing else can run on it. Close it (await "
                f"{name}.close() or leave its 'async with' block); it gives its "
                "connection back once the server answers."
            )
        return exc.RollbackRequiredAfterCancel(
            f"A call of this {owner} was cancelled while it was running, so its "
            f"transaction is in an unknown state. Call 'await {name}.rollback()' (or close "
            f"the {'session' if name == 'session' else 'connection'}) before using it again."
        )

    def _reentrant_error(self) -> exc.ReentrantCallError:
        return exc.ReentrantCallError(
            f"The {self.owner_name}'s own async API was called from inside its "
            "run_sync() function, which runs on the worker thread that would have "
            "to serve the call: it would deadlock. Inside run_sync, use the sync "
            "Session/Connection passed to your function instead."
        )

    def _cross_loop_error(self, loop: Any) -> exc.CrossLoopError:
        return exc.CrossLoopError(
            f"This {self.owner_name} has calls in flight from another event loop "
            f"(loop at {id(self._loop):#x}) and cannot be used from this one (loop at "
            f"{id(loop):#x}, thread {threading.current_thread().name!r}) at the same "
            "time. Use one session per event loop (e.g. one per thread or per "
            "asyncio.run()), or wait for the other loop's calls to finish."
        )

    # -- the one entry -------------------------------------------------------------------

    @overload
    def run(self, kind: LocalKind, fn: Callable[..., _T], /, *args: Any, **kw: Any) -> _T: ...

    @overload
    def run(
        self, kind: Kind, fn: Callable[..., _T], /, *args: Any, **kw: Any
    ) -> Coroutine[Any, Any, _T]: ...

    def run(self, kind: Kind, fn: Callable[..., _T], /, *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args, **kw)`` for this owner under ``kind``'s policy.

        Returns a coroutine to await, except for a LOCAL step, which runs (or is
        queued) before this returns and returns ``fn``'s result (None if queued).
        """
        if kind.direct:
            return self._run(kind, fn, args, kw)
        if kind.local:
            return self._local(kind, fn, args, kw)
        # user code: the worker runs it marked as this runner's, for the reentrancy check
        return self._run(kind, _run_user, (self, fn, args, kw), {})

    async def _run(
        self,
        kind: Kind,
        fn: Callable[..., _T],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        bounded: bool = False,  # (a local, set below: a parameter costs nothing)
    ) -> _T:
        if self.state is not _ACTIVE or kind.ends:
            if self.state is _IDLE and not kind.ends and self._activate_if_free():
                pass  # an owner's first call, a slot free: the common case
            else:
                action = self._admission(kind)
                if action is _ACQUIRE or action is _WAIT_END:
                    action = await self._admit(kind)
                if action is _IN_PLACE_END:  # a close with nothing in flight
                    try:
                        return fn(*args, **kw)
                    finally:
                        self._release()
                if action is _QUEUE_BOUNDED:
                    bounded = True
                elif action is not _QUEUE:
                    return self._elsewhere(action, kind, fn, args, kw)  # type: ignore[no-any-return]
        worker: Worker = self.worker  # type: ignore[assignment]  # (ACTIVE or admitted)
        # from its own run_sync (which is in flight): it would deadlock
        if self._pending and _inside_runner.get() is self:
            raise self._reentrant_error()
        if worker.ident == _get_ident():
            return fn(*args, **kw)
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            raise error
        loop = _get_running_loop()
        if loop is None:
            return await self._run_trio(worker, bounded, kind, fn, args, kw)  # type: ignore[no-any-return]
        if self._pending and self._loop is not loop:
            raise self._cross_loop_error(loop)
        fut = loop.create_future()
        call = _Call(self, kind, fn, args, kw, loop, fut)
        if _placement.enabled:
            call.cpu = _placement.cpu_for(loop)
        self._loop = loop
        self._pending += 1
        worker.put(call)
        try:
            if bounded:
                return await self._bounded(call, fut)  # type: ignore[no-any-return]
            return await fut  # type: ignore[no-any-return]
        except _CancelledError:
            if fut.cancelled() or not fut.done():  # (not done: a bounded wait's shield)
                await self._cancelled(call, worker)
            else:
                self._unreceived(call, fut)
            raise
        finally:
            self._pending -= 1

    async def _run_trio(
        self,
        worker: Worker,
        bounded: bool,
        kind: Kind,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> Any:
        signal = _Signal()  # raises when no event loop library runs here
        if self._pending and self._loop is not signal._token:
            raise self._cross_loop_error(signal._token)
        call = _Call(self, kind, fn, args, kw)
        call.signal = signal
        if _placement.enabled:
            call.cpu = _placement.cpu_for(signal._token)
        self._loop = signal._token
        self._pending += 1
        worker.put(call)
        try:
            if bounded:
                if not await signal.wait(GRACE) and self._leave_queued(call, worker):
                    return None
                await signal.wait()  # it is done: its outcome is on its way
            else:
                await signal.wait()
        except BaseException as error:
            if signal.is_cancel(error):
                if not signal.woken:
                    await self._cancelled(call, worker)
                elif call.ok:
                    self._unreceived_value(call, call.value)
            raise
        finally:
            self._pending -= 1
        if call.ok:
            return call.value
        raise call.value

    async def exit_block(
        self, nested: bool, exit_fn: Callable[..., Any], type_: Any, value: Any, tb: Any
    ) -> None:
        """The exit of ``async with ...begin()`` (Core or ORM), shielded.

        A block that ends normally commits, unless a call cancelled while it ran left
        the transaction in an unknown state: then it is rolled back instead and the
        after-cancel error raised, so half a unit of work is never committed.  This is
        the after-cancel rule for transaction blocks, written once.
        """
        refused = None
        if type_ is None and self.needs_rollback:
            refused = self._refusal()
            type_, value, tb = type(refused), refused, None
        kind = COMMIT_EXIT if type_ is None else (SAVEPOINT_ROLLBACK if nested else ROLLBACK)
        await self._run(kind, exit_fn, (type_, value, tb), {})
        if refused is not None:
            raise refused

    # -- admission: everything that is not the fast path -------------------------------

    async def _admit(self, kind: Kind) -> int:
        """Bring the runner to a state where ``kind`` can run (waiting for a slot or
        for a close to finish), and say how it runs (see :meth:`_admission`)."""
        while True:
            action = self._admission(kind)
            if action is _ACQUIRE:
                await self._acquire()
            elif action is _WAIT_END:
                await self._wait_end()
            else:
                return action

    def _admission(self, kind: Kind) -> int:
        """How ``kind`` runs in the current state: queued on the worker and awaited,
        queued and not awaited (a recovery call behind a fenced one), in place, or not
        at all; or what must be waited for first (a slot, a close).  Takes a free
        slot at once, so the common first call of an owner does not wait."""
        while True:
            state = self.state
            if state is _ACTIVE or state is _NEEDS_ROLLBACK:
                # (a DETACHED call arrives here after _acquire(), like any other)
                if state is _NEEDS_ROLLBACK and kind.refused_after_cancel:
                    raise self._refusal()
                if kind.ends:
                    if (
                        kind.in_place_when_idle
                        and not self._pending
                        and self._posted == self._posted_done
                    ):
                        return _IN_PLACE_END
                    self._begin_end()
                return _QUEUE
            if state is _FENCED:
                if kind.refused_after_cancel:
                    raise self._refusal()
                if kind.ends:
                    self._begin_end()
                return _POST if _unwinding_a_cancellation() else _QUEUE_BOUNDED
            if state is _CLOSED:
                if kind.ends or kind.clears:
                    return _SKIP
                raise self._refusal()
            if state is _CLOSING:
                return _WAIT_END
            if kind.ends and not kind.acquires:
                return _IN_PLACE  # no worker was ever taken: nothing holds a connection
            return _ACQUIRE

    def _activate_if_free(self) -> bool:
        """IDLE -> ACTIVE when a slot is free and nobody queues for one."""
        home = self._home
        if not self._slotless and (home._free <= 0 or home._queue):
            # a peek without the lock: a slot freed meanwhile is found by enqueue()
            return False
        lock = self._lock
        lock.acquire()  # (not 'with': this is on every session's path)
        try:
            if self.state is _IDLE and (self._slotless or self._home.try_acquire()):
                if not self._slotless:
                    home = self._home
                    self._slots[home] = self._slots.get(home, 0) + 1
                self.worker = pool.checkout()
                self.state = _ACTIVE
                return True
        finally:
            lock.release()
        return False

    def _idle_locally(self) -> bool:
        return not self._pending and self._posted == self._posted_done

    def _elsewhere(
        self, action: int, kind: Kind, fn: Callable[..., Any], args: Any, kw: dict[str, Any]
    ) -> Any:
        if action is _POST:
            self._post(kind, fn, args, kw)
            return None
        if action is _SKIP:
            return None
        assert action is _IN_PLACE
        return fn(*args, **kw)

    async def _acquire(self) -> None:
        """IDLE or ACQUIRING -> ACTIVE: a slot (awaited on the loop), then a worker.
        Several tasks starting one owner share one place in the slot queue; one that
        gives up leaves it to the others."""
        with self._lock:
            if self.state is _IDLE:
                if self._slotless:
                    self._activate_locked()
                    return
                # (_run tried for a free slot already: enqueue() takes one that came)
                signal = _Signal()
                self.state = State.ACQUIRING
                request = self._request = _Request(self._granted)
                self._start_signals.append(signal)
                queued = True
            elif self.state is State.ACQUIRING:
                signal = _Signal()
                self._start_signals.append(signal)
                request = self._request  # type: ignore[assignment]
                queued = False
            else:
                return
        if queued and self._home.enqueue(request):
            self._granted()
        timeout = self._home.timeout
        try:
            granted = await signal.wait(timeout)
        except BaseException:
            self._give_up(signal)
            raise
        if not granted:
            self._give_up(signal)
            if self.state not in _WITH_WORKER:
                raise self._home.timeout_error()
            return
        lock = self._lock
        lock.acquire()
        try:
            self._woken -= 1
        finally:
            lock.release()

    def _granted(self) -> bool:
        """The home slot came (on the releasing thread): take a worker, wake everyone."""
        lock = self._lock
        lock.acquire()  # (not 'with': this is on the path of every session that waits)
        try:
            if self.state is not State.ACQUIRING or not self._start_signals:
                return False
            self._activate_locked()
            signals, self._start_signals = self._start_signals, []
            self._woken = len(signals)
            self._request = None
        finally:
            lock.release()
        for signal in signals:
            signal.wake()
        return True

    def _activate_locked(self) -> None:
        if not self._slotless:
            self._slots[self._home] = self._slots.get(self._home, 0) + 1
        self.worker = pool.checkout()
        self.state = _ACTIVE

    def _give_up(self, signal: _Signal) -> None:
        """A task stops waiting for the home slot (cancelled, or its wait timed out)."""
        request = None
        with self._lock:
            try:
                self._start_signals.remove(signal)
            except ValueError:
                # the slot came as this task gave up: if every task it came for gave
                # up too and none made a call, nobody will use it: give it back
                self._woken -= 1
                abandon = self._woken == 0 and not self._pending and self.state is _ACTIVE
            else:
                abandon = False
                if self._start_signals or self.state is not State.ACQUIRING:
                    return  # others still wait for this owner's slot
                request, self._request = self._request, None
                self.state = _IDLE
        if abandon:
            self._release()
        elif request is not None:
            # False: a grant is on its way; _granted() refuses it and it passes on
            self._home.withdraw(request)

    def _begin_end(self) -> None:
        with self._lock:
            if self.state in _WITH_WORKER:
                self.state = _CLOSING
                self._after = True

    async def _wait_end(self) -> None:
        signal = _Signal()
        with self._lock:
            if self.state is not _CLOSING:
                return
            self._end_signals.append(signal)
        try:
            await signal.wait()
        finally:
            with self._lock:
                if signal in self._end_signals:
                    self._end_signals.remove(signal)

    # -- on the worker: after a call that changes the state ------------------------------

    def _finished(self, call: _Call, ok: bool, value: Any, received: bool) -> None:
        """Runs on the worker after ``call``, before its caller hears of it."""
        kind = call.kind
        if not received:
            if ok and kind.closes_unreceived:
                _close_quietly(value)
            elif not ok and kind.shielded:
                _log.warning(
                    "A %s of an %s that nobody awaited any more failed",
                    kind.name,
                    self.owner_name,
                    exc_info=value,
                )
        with self._lock:
            if self._stuck is call:
                self._stuck = None
                if self.state is _FENCED:
                    self.state = _NEEDS_ROLLBACK
            if ok and kind.clears and self.state is _NEEDS_ROLLBACK:
                self.state = _ACTIVE
            if not kind.ends:
                self._after = self.state is not _ACTIVE or self._stuck is not None
                return
        self._release()

    def _release(self) -> None:
        """Give the worker back to the pool and the slots back to their engines."""
        lock = self._lock
        lock.acquire()  # (not 'with': this is on every session's path)
        try:
            worker = self.worker
            self.worker = None
            slots, self._slots = self._slots, {}
            self._in_use = {}
            self._stuck = None
            self._after = False
            self._loop = None
            self.state = _IDLE if self._reusable else _CLOSED
            signals = self._end_signals
            if signals:
                self._end_signals = []
        finally:
            lock.release()
        if worker is not None:
            pool.checkin(worker)
        for limiter, count in slots.items():
            limiter.release(count)
        for signal in signals:
            signal.wake()

    # -- cancellation -------------------------------------------------------------------

    async def _cancelled(self, call: _Call, worker: Worker) -> None:
        """The awaiting task was cancelled before the call's outcome reached it."""
        kind = call.kind
        with worker.lock:
            if call.state == _QUEUED and not kind.shielded:
                call.state = _DROPPED
                return
            if call.state == _DONE:
                return  # the outcome is on its way: the unreceived path handles it
            watcher = call.watcher = _Signal()
            running = call.state == _RUNNING
            call.received = False  # its future is cancelled: the worker cleans up
        if running and kind.interruptible:
            with self._lock:
                if self.state is _ACTIVE:
                    self.state = _NEEDS_ROLLBACK
                    self._after = True
            self._interrupt(call, worker)
        if await watcher.wait_shielded(GRACE):
            return
        with worker.lock:
            if call.state == _DONE:
                return
        if kind.interruptible or call.state == _RUNNING:
            with self._lock:
                if self.state in (_ACTIVE, _NEEDS_ROLLBACK):
                    self.state = _FENCED
                    self._stuck = call
                    self._after = True
                elif self.state is _CLOSING and self._stuck is None:
                    self._stuck = call

    async def _bounded(self, call: _Call, fut: asyncio.Future[Any]) -> Any:
        """A recovery call queued behind a fenced one: wait for it at most GRACE
        seconds; if the server still has not answered, leave it queued (it runs, and
        ends the fence, when the server lets go)."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), GRACE)
        except (asyncio.TimeoutError, TimeoutError):
            assert self.worker is not None
            if self._leave_queued(call, self.worker):
                return None
            return await fut

    @staticmethod
    def _leave_queued(call: _Call, worker: Worker) -> bool:
        """A bounded wait ran out: leave ``call`` queued for the worker to clean up
        (True), unless it is already done (its outcome is on its way)."""
        with worker.lock:
            if call.state != _DONE:
                call.received = False
                return True
        return False

    def _unreceived(self, call: _Call, fut: asyncio.Future[Any]) -> None:
        """The task was cancelled just as its outcome arrived: clean the outcome up."""
        if not fut.cancelled() and fut.exception() is None:
            self._unreceived_value(call, fut.result())

    def _unreceived_value(self, call: _Call, value: Any) -> None:
        if call.kind.closes_unreceived:
            self._post(LOCAL, _close_quietly, (value,), {})

    def _interrupt(self, call: _Call, worker: Worker) -> None:
        """Start interrupting ``call`` (off the loop, repeated while it runs)."""

        def attempt() -> None:
            request = self._slot_request
            if request is not None:
                request.cancel()
            with _holders_lock:
                connections = list(self._connections.items())
                _interrupted.update(key for key, _ in connections)
            for _, dbapi_connection in connections:
                _interrupt.interrupt_connection(dbapi_connection)

        def still_running() -> bool:
            return call.state == _RUNNING

        _interrupt.Interruption(attempt, still_running, worker.interrupt_lock).start()

    # -- slots of further engines (on the worker) --------------------------------------

    def _slot_for(self, limiter: Limiter) -> None:
        """Before a checkout from ``limiter``'s pool by one of this owner's calls:
        make sure the owner holds a slot for it (waiting on this worker thread)."""
        # no lock: only this thread adds to either count; a checkin elsewhere can
        # only lower _in_use, which is as if it had come just after this look
        if self._in_use.get(limiter, 0) < self._slots.get(limiter, 0):
            return
        request = self._slot_request = _Request()
        try:
            limiter.acquire_blocking(request)
        finally:
            self._slot_request = None
        with _holders_lock:
            self._slots[limiter] = self._slots.get(limiter, 0) + 1

    # -- LOCAL steps and fire-and-forget calls --------------------------------------------

    def _local(
        self, kind: Kind, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """A connection-free sync step.  Before the owner takes a worker it runs here,
        on the calling thread; while the worker is idle it is handed to the worker and
        waited for (no I/O: a thread hand-off); while calls are in flight it is queued
        behind them, so it keeps its place in the order."""
        state = self.state
        worker = self.worker
        if worker is None or state is _IDLE or state is State.ACQUIRING:
            return fn(*args, **kw)  # no thread yet: in place, as in SQLAlchemy
        if worker.ident == _get_ident():
            return fn(*args, **kw)  # already on the worker (inside run_sync)
        if not self._idle_locally() or state is _FENCED or state is _CLOSING:
            if kind.checks_instances:
                _check_instances(args[0])
            self._post(kind, fn, args, kw)
            return None
        call = _Call(self, kind, fn, args, kw)
        handoff = call.signal = _SyncHandoff()
        worker.put(call)
        handoff.wait()
        if call.ok:
            return call.value
        raise call.value

    def _post(
        self, kind: Kind, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        """Queue a call nobody awaits: its error is raised by the next awaited call
        (LOCAL) or logged (a recovery call queued behind a fenced one)."""
        worker = self.worker
        if worker is None:
            fn(*args, **kw)
            return
        self._posted += 1
        call = _Call(self, kind, self._run_posted, (kind, fn, args, kw), None)
        call.received = False
        with self._lock:
            self._after = True
        worker.put(call)

    def _run_posted(
        self, kind: Kind, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        try:
            return fn(*args, **kw)
        except BaseException as error:
            if kind.local:
                self._deferred_error = error
                return None
            raise
        finally:
            self._posted_done += 1

    # -- garbage collection --------------------------------------------------------------

    def __del__(self) -> None:
        worker = self.worker
        if worker is None or self.state is _CLOSING or sys.is_finalizing():
            return
        self.worker = None
        finalizer = self.finalizer
        slots = dict(self._slots)

        def close_and_return() -> None:
            try:
                if finalizer is not None:
                    finalizer()
            finally:
                pool.checkin(worker)
                for limiter, count in slots.items():
                    limiter.release(count)

        # queue the close first: with warnings turned into errors, warn() raises
        call = _Call(None, END, close_and_return, (), None)
        call.context = contextvars.Context()
        call.received = False
        worker.put(call)
        warnings.warn(
            f"{self.owner_name} was garbage-collected without being closed; async_orm "
            "closed it on its worker thread. Close it with 'async with' or 'await "
            f"{self.owner_name.lower()}.close()'.",
            ResourceWarning,
            stacklevel=2,
        )


def _unwinding_a_cancellation() -> bool:
    """True while the current asyncio task is being cancelled (``async with`` exits
    during a timeout): such a caller must not wait for a server that does not answer."""
    loop = _get_running_loop()
    if loop is None:
        return False
    task = asyncio.current_task(loop)
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


# how _admit() lets a call run
_QUEUE: Final = 0  # queued on the worker and awaited
_QUEUE_BOUNDED: Final = 1  # queued behind a fenced call, awaited for at most GRACE
_POST: Final = 2  # queued, not awaited
_IN_PLACE: Final = 3  # run on the calling thread (no worker was ever taken)
_IN_PLACE_END: Final = 4  # an end in place, then the worker and slots go back
_SKIP: Final = 5  # nothing to do
_ACQUIRE: Final = 6  # not yet: wait for a slot first
_WAIT_END: Final = 7  # not yet: wait for the close in progress first


def _check_instances(instances: Any) -> None:
    """Raise UnmappedInstanceError now for an object the ORM cannot add."""
    from sqlalchemy import inspect
    from sqlalchemy.orm import exc as orm_exc

    for instance in instances if isinstance(instances, list) else (instances,):
        try:
            inspect(instance)
        except sa_exc.NoInspectionAvailable as err:
            raise orm_exc.UnmappedInstanceError(instance) from err


def _close_quietly(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            _log.debug("closing an unreceived result failed", exc_info=True)


def detached(owner_name: str = "AsyncEngine") -> Runner:
    """A runner for engine-level work (dispose, raw_connection): a pooled worker that
    takes no slot, so it works while every slot is busy."""
    return Runner(_unbound_limiter, owner_name, slotless=True)


def new_runner(engines: list[Engine], owner_name: str, *, reusable: bool = True) -> Runner:
    """A runner for an owner bound to ``engines`` (the distinct engines of its binds)."""
    if len(engines) == 1:  # the common case, in one step
        engine = engines[0]
        if not engine.__dict__.get(_INSTRUMENTED):
            instrument(engine)
        home = engine.pool.__dict__.get(_LIMITER) or limiter_for(engine)
        return Runner(home, owner_name, reusable=reusable)
    for engine in engines:
        instrument(engine)
    if not engines:
        home = _unbound_limiter
    elif len({id(e.pool) for e in engines}) == 1:
        home = limiter_for(engines[0])
    else:
        home = _several_binds_limiter
    return Runner(home, owner_name, reusable=reusable)


# --------------------------------------------------------------------------
# back to the event loop, from code a worker runs (listeners, library shims)
#
# Session and engine listeners (``after_commit``, ``before_flush``, ...) run where
# the sync SQLAlchemy call runs: on the session's worker thread, which has no
# running event loop.  These hand work to the loop of the task that awaited the
# call (the one that fired the event), thread-safely; on an event loop thread they
# are ``loop.create_task()`` and ``loop.call_soon()``.  The one-line migration::
#
#     asyncio.create_task(invalidate(keys))            # before
#     async_orm.create_task_in_loop(invalidate(keys))  # after


def _no_loop(helper: str) -> RuntimeError:
    return RuntimeError(
        f"async_orm.{helper}() found no event loop to schedule on: it was called neither "
        "on an event loop thread nor on an async_orm worker thread running an awaited "
        "call (such as a listener fired by 'await session.commit()'). Call it from a "
        "listener of an AsyncSession/AsyncConnection call or from async code; in plain "
        "sync code, run the work directly."
    )


def _loop_context() -> contextvars.Context:
    """The caller's context variables, less the marker that says "inside this session's
    run_sync()": the scheduled work runs later, on the loop, where using the session
    again is fine (it is served after the call in flight)."""
    context = contextvars.copy_context()
    context.run(_inside_runner.set, None)
    return context


def create_task_in_loop(
    coro: Coroutine[Any, Any, _T],
) -> asyncio.Task[_T] | concurrent.futures.Future[_T]:
    """Run ``coro`` as a task of the event loop that awaits the current call.

    The thread-safe replacement for ``asyncio.create_task(coro)`` in session and
    engine listeners, which async_orm runs on the session's worker thread.  On a
    worker thread it returns a :class:`concurrent.futures.Future` of the task's
    result (as :func:`asyncio.run_coroutine_threadsafe`; cancelling it cancels the
    task); on an event loop thread it is ``loop.create_task(coro)`` and returns the
    :class:`asyncio.Task`.  Both have ``add_done_callback()``, ``cancel()`` and
    ``result()``.  Never blocks: the task starts once the loop gets to it.

    Under Trio (a call awaited from a Trio task, or on the Trio thread itself)
    ``coro`` runs as a Trio system task of that run, and the
    :class:`concurrent.futures.Future` is returned; cancelling it cancels the task.
    """
    loop, token = _awaiting()
    if loop is not None:
        return _loop_context().run(asyncio.run_coroutine_threadsafe, coro, loop)
    if token is not None:
        return _trio_task(token, coro, _loop_context())
    loop, token = _running_here()
    if loop is not None:
        return loop.create_task(coro)
    if token is not None:
        return _trio_task(token, coro, contextvars.copy_context())
    coro.close()  # never awaited: close it rather than warn "never awaited"
    raise _no_loop("create_task_in_loop")


def call_soon_in_loop(
    callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
) -> asyncio.Handle | None:
    """Call ``callback(*args)`` soon on the event loop that awaits the current call.

    The thread-safe replacement for ``asyncio.get_running_loop().call_soon(...)``
    in session and engine listeners: on an async_orm worker thread it is
    ``loop.call_soon_threadsafe(callback, *args)`` for the loop of the task that
    fired the event; on an event loop thread it is ``loop.call_soon(callback, *args)``;
    both return the :class:`asyncio.Handle`.  Under Trio (from a worker, or on the
    Trio thread itself) it is the run's ``TrioToken.run_sync_soon``, and returns None.
    """
    loop, token = _awaiting()
    if loop is not None:
        return loop.call_soon_threadsafe(callback, *args, context=_loop_context())
    if token is not None:
        token.run_sync_soon(_loop_context().run, callback, *args)
        return None
    loop, token = _running_here()
    if loop is not None:
        return loop.call_soon(callback, *args)
    if token is not None:
        token.run_sync_soon(contextvars.copy_context().run, callback, *args)
        return None
    raise _no_loop("call_soon_in_loop")


def _running_here() -> tuple[asyncio.AbstractEventLoop | None, Any]:
    """(asyncio loop, TrioToken): the event loop running on this thread itself, one of
    the two; (None, None) on a thread that runs none (an async_orm worker, plain code)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop, None
    lowlevel = _trio_lowlevel()
    return None, (lowlevel.current_trio_token() if lowlevel is not None else None)


def _awaiting() -> tuple[asyncio.AbstractEventLoop | None, Any]:
    """(asyncio loop, TrioToken): the event loop whose task awaits the call running on
    this thread (an async_orm worker), one of the two; (None, None) elsewhere."""
    call = _current_call()
    if call is None or call.loop is not None:
        return (call.loop if call is not None else None), None
    signal = getattr(call, "signal", None)  # (a call nobody awaits has none)
    return None, (signal._token if signal is not None else None)


def _trio_task(
    token: Any, coro: Coroutine[Any, Any, _T], context: contextvars.Context
) -> concurrent.futures.Future[_T]:
    """``coro`` as a system task of the Trio run of ``token``; its outcome in a
    Future, whose cancel() cancels the task."""
    import trio

    future: concurrent.futures.Future[_T] = concurrent.futures.Future()
    scope = trio.CancelScope()

    async def run() -> None:
        if future.cancelled():
            coro.close()  # cancelled before it started
            return
        try:
            with scope:
                value = await coro
        except BaseException as error:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if scope.cancelled_caught:
                future.cancel()
            else:
                future.set_result(value)

    def cancel_task(done: concurrent.futures.Future[_T]) -> None:
        if done.cancelled():  # by the caller (or the task's own cancellation)
            with contextlib.suppress(RuntimeError):  # the run is over
                token.run_sync_soon(scope.cancel)

    future.add_done_callback(cancel_task)
    token.run_sync_soon(lambda: trio.lowlevel.spawn_system_task(run, context=context))
    return future


def run_in_calling_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """On a worker thread running an awaited call: run ``coro`` on the event loop
    (asyncio or Trio) that awaits the call and wait for its result (asgiref's
    ``async_to_sync`` hand-back).  RuntimeError when this thread runs no such call."""
    loop, token = _awaiting()
    if loop is not None:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    if token is None:
        coro.close()
        raise RuntimeError("no awaited call runs on this thread to hand the coroutine to")
    import trio

    async def run() -> _T:
        return await coro

    return trio.from_thread.run(run, trio_token=token)


def can_hand_back() -> bool:
    """True on a worker thread running a call awaited from asyncio or Trio."""
    return _awaiting() != (None, None)


def reentrant_lock() -> Any:
    """A re-entrant lock, for module state that sync threads share (Django settings)."""
    return threading.RLock()


_NO_LOOP_ON_WORKER: Final = (
    "no running event loop: this code ran on async_orm's worker thread {name!r}, which "
    "runs the session's sync calls and their event listeners and has no event loop, so "
    "asyncio.get_running_loop() and asyncio.create_task() fail there. Schedule the work "
    "on the event loop that awaited the call: async_orm.create_task_in_loop(coro) "
    "instead of asyncio.create_task(coro), async_orm.call_soon_in_loop(fn, *args) "
    "instead of loop.call_soon(fn, *args)."
)


# --------------------------------------------------------------------------
# thread placement


class _Placement:
    """Where worker threads run (``async_orm.configure(colocate_threads=True)``).

    Under the GIL, an event loop and the workers serving it gain nothing from running
    on different CPUs (their Python work is serialized anyway; the driver's waits need
    no CPU), while every hand-over between them wakes another CPU.  With colocation
    on, each event loop is given one CPU of the allowed set and the workers serving
    its calls are placed on it (Linux ``sched_setaffinity`` of the worker thread
    itself, once per change).  The CPU is chosen so that several processes on one
    machine spread over the CPUs: the CPU the loop's thread runs on when it first
    awaits a call (the scheduler has balanced the machine's processes by then), or,
    where that cannot be read, the process id and the loop's number modulo the set.
    Threads the library does not own are never touched, unless ``pin_event_loop=True``
    asks for exactly that.
    """

    def __init__(self) -> None:
        self.enabled = False
        #: True once placement has been on: workers then check each call's CPU
        #: (and go back to the allowed set once it is off again)
        self.engaged = False
        self.pin_event_loop = False
        self.cpus: tuple[int, ...] = ()
        self._loops: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")

    @staticmethod
    def choose(pid: int, number: int, cpus: tuple[int, ...]) -> int:
        """The CPU of loop ``number`` of process ``pid``: processes spread first."""
        return cpus[(pid + number) % len(cpus)]

    def cpu_for(self, loop: Any) -> int:
        cpu = self._loops.get(loop)
        if cpu is None:
            with self._lock:
                cpu = self._loops.get(loop)
                if cpu is None:
                    # where the scheduler runs the loop's thread now: it has already
                    # balanced the processes and threads of the machine
                    cpu = _current_cpu()
                    if cpu not in self.cpus:
                        cpu = self.choose(os.getpid(), next(self._numbers), self.cpus)
                    self._loops[loop] = cpu
            if self.pin_event_loop:
                os.sched_setaffinity(0, {cpu})  # this is the loop's own thread
        return cpu

    def follow(self, worker: Worker, call: _Call) -> None:
        """On the worker, before ``call``: place it where the call is to run."""
        cpu = getattr(call, "cpu", None)  # (set by the caller while placement is on)
        if cpu != worker.cpu and (cpu is not None or not self.enabled):
            self.place_worker(worker, cpu)

    def place_worker(self, worker: Worker, cpu: int | None) -> None:
        """On the worker's own thread: move it to ``cpu`` (None: the allowed set)."""
        if not self.supported():
            return
        try:
            os.sched_setaffinity(0, {cpu} if cpu is not None else set(_ALLOWED_CPUS))
        except OSError:
            _log.debug("could not place %s on CPU %s", worker.name, cpu, exc_info=True)
            return
        worker.cpu = cpu


def _current_cpu() -> int | None:
    """The CPU the calling thread runs on (Linux: /proc/thread-self/stat), or None."""
    try:
        with open("/proc/thread-self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[36])  # field 39 of proc(5), "processor"; 3 fields precede
    except (OSError, IndexError, ValueError):
        return None


_ALLOWED_CPUS: tuple[int, ...] = (
    tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
)
_placement = _Placement()


def gil_enabled() -> bool:
    """False on a free-threaded CPython running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return bool(is_enabled()) if is_enabled is not None else True


def configure(
    *,
    colocate_threads: bool | None = None,
    cpus: Any = None,
    pin_event_loop: bool | None = None,
) -> dict[str, Any]:
    """Process-wide settings of the thread boundary; returns the settings in force.

    :param colocate_threads: run the worker threads that serve an event loop on one
        CPU, the loop's (Linux; a no-op where ``os.sched_setaffinity`` is missing, and
        refused with a ``RuntimeWarning`` on a free-threaded CPython, where spreading
        is the better choice).  Off by default.  See "Thread placement" in the
        threading page for when it helps and what it costs.
    :param cpus: the CPUs to place loops on (default: the process's allowed CPUs when
        the module was imported, e.g. as set by ``taskset``); each loop gets one,
        spread by process id so that several server processes use different CPUs.
    :param pin_event_loop: also pin each event loop's own thread to its CPU, at its
        first call (async_orm never changes the affinity of a thread it does not own
        unless asked for exactly this).
    """
    if colocate_threads is not None:
        if colocate_threads and not gil_enabled():
            warnings.warn(
                "async_orm.configure(colocate_threads=True) was ignored: this CPython runs "
                "without the GIL (free-threaded), where worker threads do their Python "
                "work in parallel, so spreading them over the CPUs (the default) is the "
                "better choice.",
                RuntimeWarning,
                stacklevel=3,
            )
            colocate_threads = False
        _placement.enabled = bool(colocate_threads) and _placement.supported()
        _placement.engaged = _placement.engaged or _placement.enabled
        _placement._loops = weakref.WeakKeyDictionary()
    if cpus is not None:
        chosen = tuple(sorted({int(cpu) for cpu in cpus}))
        if not chosen or not set(chosen) <= set(_ALLOWED_CPUS or chosen):
            raise ValueError(
                f"cpus must be a non-empty subset of this process's allowed CPUs "
                f"{list(_ALLOWED_CPUS)}, not {list(chosen)}"
            )
        _placement.cpus = chosen
        _placement._loops = weakref.WeakKeyDictionary()
    elif not _placement.cpus:
        _placement.cpus = _ALLOWED_CPUS or (0,)
    if pin_event_loop is not None:
        _placement.pin_event_loop = bool(pin_event_loop)
    return {
        "colocate_threads": _placement.enabled,
        "cpus": list(_placement.cpus),
        "pin_event_loop": _placement.pin_event_loop,
        "supported": _placement.supported(),
        "gil_enabled": gil_enabled(),
    }


# --------------------------------------------------------------------------
# fork


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: forget the parent's
    workers and slot holders, so the child starts fresh."""
    global _holders_lock, _limiters_lock
    pool._lock = threading.Lock()
    pool._idle = []
    pool._alive = set()
    # only the forking thread lives on: a new thread may get a dead worker's ident
    mine = _workers.get(_get_ident())
    _workers.clear()
    if mine is not None:
        _workers[_get_ident()] = mine
    _holders_lock = threading.Lock()
    _limiters_lock = threading.Lock()
    _holders.clear()
    for limiter in list(_all_limiters):
        limiter._lock = threading.Lock()
        limiter._queue.clear()
        limiter._free = limiter.capacity


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
