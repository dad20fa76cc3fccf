"""AsyncResult and its scalar, mapping and tuple views.

Returned by ``stream()`` / ``stream_scalars()``: the sync result keeps its
server-side cursor (PostgreSQL) or lazy cursor (SQLite) on the owner's worker
thread, and rows come to the event loop in chunks, one thread hop per chunk
(``yield_per`` rows, 1000 by default).  ``async for`` then serves rows from the
chunk without further hops.

What crosses the thread boundary is the driver's rows as SQLAlchemy fetched them
(ORM objects already loaded, on the worker); ``async for`` and ``fetchone()`` turn
each into its :class:`Row` (or scalar, or mapping) as it is handed out, as the
sync ``Result`` does while it is iterated.  Building a whole chunk of ``Row``
objects ahead would keep a thousand young objects alive per hop, which doubles
the garbage collector's work on a long stream.  With
:meth:`~async_orm.AsyncResult.unique` the chunk is built and de-duplicated on the
worker instead.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result, Row, RowMapping
from sqlalchemy.engine.result import FilterResult, FrozenResult, _WithKeys
from sqlalchemy.util import TypingOnly
from typing_extensions import TypeVarTuple, Unpack

from ._worker import STATEMENT

if TYPE_CHECKING:
    from sqlalchemy.engine.result import _KeyIndexType, _UniqueFilterType

    from ._worker import Runner

_T = TypeVar("_T", bound=Any)
_R = TypeVar("_R", bound=Any)
_Ts = TypeVarTuple("_Ts")
TupleAny = tuple[Any, ...]

__all__ = [
    "AsyncCommon",
    "AsyncMappingResult",
    "AsyncResult",
    "AsyncScalarResult",
    "AsyncTupleResult",
]

#: rows fetched per thread hop when no yield_per is set
DEFAULT_CHUNK = 1000


def _same(row: Any) -> Any:
    return row


_NO_RUNNER = (
    "This {cls} is not attached to an async_orm session or connection. Get async "
    "results from AsyncSession.stream() or AsyncConnection.stream()."
)


class AsyncCommon(FilterResult[_R]):
    """Shared machinery: a local buffer filled one chunk per hop."""

    __slots__ = ()

    _real_result: Result[Unpack[TupleAny]]
    _runner: Runner
    _buffer: deque[Any]

    def _attach(self, runner: Runner | None) -> None:
        if runner is not None:
            self._runner = runner
        self._buffer = deque()

    def _get_runner(self) -> Runner:
        try:
            return self._runner
        except AttributeError:
            raise sa_exc.InvalidRequestError(_NO_RUNNER.format(cls=type(self).__name__)) from None

    def _take_buffer_of(self, parent: AsyncCommon[Any], convert: Callable[[Any], Any]) -> None:
        """A view made from a partly read result: the rows the parent fetched (a chunk
        per hop) but has not handed out yet are the view's next rows, in its shape, as
        they are when a sync result and its view share one cursor."""
        buffer = parent._buffer
        if buffer:
            if parent._unique_filter_state:
                # built on the worker in the parent's shape (see _fill)
                self._buffer.extend(map(convert, buffer))
            else:
                # as fetched: the view builds them in its own shape
                self._buffer.extend(buffer)
            buffer.clear()

    def _refuse_if_buffered(self, method: str) -> None:
        if self._buffer:
            raise sa_exc.InvalidRequestError(
                f"{method}() was called on this {type(self).__name__}, which has already "
                f"fetched {len(self._buffer)} rows it has not handed out yet (rows come "
                f"one chunk per thread hop), and those rows would escape {method}(). "
                f"Call {method}() before reading rows, e.g. "
                f"(await session.stream(stmt)).{method}()."
            )

    def _set_unique(self, strategy: _UniqueFilterType | None) -> None:
        self._refuse_if_buffered("unique")
        self._generate()  # like SQLAlchemy's generative unique(): the row getters depend on it
        self._unique_filter_state = (set(), strategy)

    def _chunk(self, size: int | None) -> int:
        return size or self._real_result._yield_per or DEFAULT_CHUNK

    def _unique_chunk(self) -> int | None:
        """Rows per hop under unique().  An ORM result on a server-side cursor refuses
        sized fetches once unique() is applied ("Can't use the ORM yield_per feature in
        conjunction with unique()"); without a yield_per of the user's, it is read whole
        in one hop (None: all rows), as SQLAlchemy's own async for reads it."""
        real = self._real_result
        if getattr(real, "dynamic_yield_per", False) and not real._yield_per:
            return None
        return self._chunk(None)

    def _finish(self, row: Any) -> Any:
        """Turn one buffered row into what this result hands out.  The first call
        memoizes the function for this result in its ``__dict__``, where it shadows
        this method (``columns()`` and ``unique()`` reset it)."""
        return self._build_row()(row)

    def _build_row(self) -> Callable[[Any], Any]:
        try:
            return self.__dict__["_finish"]  # type: ignore[no-any-return]
        except KeyError:
            pass
        finish: Callable[[Any], Any]
        if self._unique_filter_state:
            finish = _same  # built on the worker: see _fill
        else:
            getter: Any = self._row_getter
            make_row = getter[0] if isinstance(getter, tuple) else getter  # SA 2.1 / 2.0
            post = self._post_creational_filter
            if make_row is None:
                finish = post or _same
            elif post is None:
                finish = make_row
            else:

                def finish(raw: Any) -> Any:
                    return post(make_row(raw))

        self._set_memoized_attribute("_finish", finish)
        return finish

    async def _fill(self) -> bool:
        """Fetch the next chunk into the empty buffer, one hop; False when exhausted."""
        runner = self._get_runner()
        rows: Sequence[Any]
        if self._unique_filter_state:
            # de-duplicating needs the built rows: build and filter them on the worker
            size = self._unique_chunk()
            if size is None:
                rows = await runner.run(STATEMENT, self._allrows)
            else:
                rows = await runner.run(STATEMENT, self._manyrow_getter, self, size)
        else:
            rows = await runner.run(STATEMENT, self._fetchmany_impl, self._chunk(None))
        if not rows:
            return False
        self._buffer.extend(rows)
        return True

    async def _anext(self) -> _R:
        """The views' ``__anext__``, written once.  Each view binds this very function
        as its ``__anext__`` (a wrapper would cost a coroutine frame per row) and declares
        its row type for type checkers under ``TYPE_CHECKING``, where an assignment from
        ``AsyncCommon`` would leave the row type unknown."""
        buffer = self._buffer
        if buffer or await self._fill():  # the common case: no hop, no extra coroutine
            return self._finish(buffer.popleft())  # type: ignore[no-any-return]
        raise StopAsyncIteration()

    async def _next_row(self) -> Any:
        buffer = self._buffer
        if buffer or await self._fill():
            return self._finish(buffer.popleft())
        return None

    def _take(self, count: int) -> list[Any]:
        buffer = self._buffer
        finish = self._build_row()
        return [finish(buffer.popleft()) for _ in range(count)]

    async def _many(self, size: int | None) -> list[Any]:
        buffer = self._buffer
        runner = self._get_runner()
        if buffer:
            count = len(buffer) if size is None else min(size, len(buffer))
            taken = self._take(count)
            if size is None or count == size:
                return taken
            more = await runner.run(STATEMENT, self._manyrow_getter, self, size - count)
            return taken + list(more)
        # no size: what the sync Result.fetchmany() returns (yield_per rows, or the
        # driver's cursor.arraysize)
        return list(await runner.run(STATEMENT, self._manyrow_getter, self, size))

    async def _rest(self) -> list[Any]:
        taken = self._take(len(self._buffer))
        rows = await self._get_runner().run(STATEMENT, self._allrows)
        return taken + list(rows) if taken else list(rows)

    async def _one_row(
        self, raise_for_second_row: bool, raise_for_none: bool, scalar: bool
    ) -> Any:
        if not self._buffer:
            return await self._get_runner().run(
                STATEMENT, self._only_one_row, raise_for_second_row, raise_for_none, scalar
            )
        # part of the result was already served from a chunk: decide locally
        rows = await self._rest() if raise_for_second_row else self._take(1)
        self._buffer.clear()
        await self._get_runner().run(STATEMENT, self._real_result.close)
        if not rows:
            if raise_for_none:
                raise sa_exc.NoResultFound("No row was found when one was required")
            return None
        if raise_for_second_row and len(rows) > 1:
            raise sa_exc.MultipleResultsFound(
                "Multiple rows were found when exactly one was required"
                if raise_for_none
                else "Multiple rows were found when one or none was required"
            )
        row = rows[0]
        return row[0] if scalar and isinstance(row, Row) else row

    async def _partitions(self, size: int | None) -> AsyncIterator[Sequence[Any]]:
        while True:
            partition = await self._many(self._chunk(size))
            if not partition:
                break
            yield partition

    async def close(self) -> None:  # type: ignore[override]
        """Close this result (and its server-side cursor), on the worker."""
        self._buffer.clear()
        await self._get_runner().run(STATEMENT, self._real_result.close)

    @property
    def closed(self) -> bool:
        """True once the underlying result is closed."""
        return self._real_result.closed


class AsyncResult(_WithKeys, AsyncCommon[Row[Unpack[_Ts]]]):
    """An asyncio wrapper around a streaming :class:`~sqlalchemy.engine.Result`.

    Returned by :meth:`AsyncConnection.stream` and :meth:`AsyncSession.stream`.
    As with the sync ``Result``, ORM rows are not de-duplicated unless
    :meth:`unique` is applied.
    """

    __slots__ = ()

    def __init__(self, real_result: Result[Unpack[_Ts]], _runner: Runner | None = None) -> None:
        self._real_result = real_result
        self._metadata = real_result._metadata
        self._unique_filter_state = real_result._unique_filter_state
        self._source_supports_scalars = real_result._source_supports_scalars
        self._post_creational_filter = None
        if "_row_getter" in real_result.__dict__:
            self._set_memoized_attribute("_row_getter", real_result.__dict__["_row_getter"])
        self._attach(_runner)

    @property
    def t(self) -> AsyncTupleResult[tuple[Unpack[_Ts]]]:
        """Typing-only: the same result, typed as tuples (see :meth:`tuples`)."""
        return self  # type: ignore[return-value]

    def tuples(self) -> AsyncTupleResult[tuple[Unpack[_Ts]]]:
        """Typing-only: the same result, typed as tuples."""
        return self  # type: ignore[return-value]

    def unique(self, strategy: _UniqueFilterType | None = None) -> AsyncResult[Unpack[_Ts]]:
        """De-duplicate rows (or ORM objects) in Python; applied in place."""
        self._set_unique(strategy)
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncResult[Unpack[_Ts]]:
        """Limit the columns of each row, by position or name."""
        self._refuse_if_buffered("columns")
        return self._column_slices(col_expressions)

    async def partitions(
        self, size: int | None = None
    ) -> AsyncIterator[Sequence[Row[Unpack[_Ts]]]]:
        """Iterate over lists of up to ``size`` rows, one thread hop per list."""
        async for partition in self._partitions(size):
            yield partition

    async def fetchall(self) -> Sequence[Row[Unpack[_Ts]]]:
        """All remaining rows (same as :meth:`all`)."""
        return await self._rest()

    async def fetchone(self) -> Row[Unpack[_Ts]] | None:
        """The next row, or ``None`` when exhausted."""
        return await self._next_row()  # type: ignore[no-any-return]

    async def fetchmany(self, size: int | None = None) -> Sequence[Row[Unpack[_Ts]]]:
        """Up to ``size`` rows; an empty list when exhausted.  With no ``size``, as
        many as the sync ``Result.fetchmany()`` returns (``yield_per``, or all)."""
        return await self._many(size)

    async def all(self) -> Sequence[Row[Unpack[_Ts]]]:
        """All remaining rows, closing the result."""
        return await self._rest()

    def __aiter__(self) -> AsyncResult[Unpack[_Ts]]:
        return self

    if TYPE_CHECKING:

        async def __anext__(self) -> Row[Unpack[_Ts]]: ...

    else:
        __anext__ = AsyncCommon._anext  # see AsyncCommon._anext

    async def first(self) -> Row[Unpack[_Ts]] | None:
        """The first row or ``None``; closes the result."""
        return await self._one_row(False, False, False)  # type: ignore[no-any-return]

    async def one_or_none(self) -> Row[Unpack[_Ts]] | None:
        """The only row or ``None``; raises if there is more than one."""
        return await self._one_row(True, False, False)  # type: ignore[no-any-return]

    async def scalar_one(self) -> Any:
        """The first column of the only row; raises unless exactly one row."""
        return await self._one_row(True, True, True)

    async def scalar_one_or_none(self) -> Any | None:
        """The first column of the only row, or ``None``; raises if several."""
        return await self._one_row(True, False, True)

    async def one(self) -> Row[Unpack[_Ts]]:
        """The only row; raises unless exactly one."""
        return await self._one_row(True, True, False)  # type: ignore[no-any-return]

    async def scalar(self) -> Any:
        """The first column of the first row, or ``None``; closes the result."""
        return await self._one_row(False, False, True)

    async def freeze(self) -> FrozenResult[Unpack[_Ts]]:
        """A :class:`~sqlalchemy.engine.FrozenResult` of the remaining rows, built on
        the worker: the rows this result would hand out, with its :meth:`columns` and
        :meth:`unique` applied, as SQLAlchemy's ``freeze()`` gives them."""
        if self._buffer:
            raise sa_exc.InvalidRequestError(
                "freeze() was called on an AsyncResult that has already fetched rows it "
                "has not handed out yet, and a frozen result must hold every row. Call "
                "freeze() before reading rows, e.g. (await session.stream(stmt)).freeze()."
            )
        # FrozenResult reads this result's reduced metadata and its filtered rows
        # (_allrows), or for an ORM entity result the raw rows (_raw_row_iterator)
        return await self._get_runner().run(STATEMENT, FrozenResult, self)

    def _raw_row_iterator(self) -> Iterator[Any]:
        """The source's raw rows, for :class:`FrozenResult`; runs on the worker."""
        return self._real_result._raw_row_iterator()

    @overload
    def scalars(
        self: AsyncResult[_T, Unpack[TupleAny]], index: Literal[0]
    ) -> AsyncScalarResult[_T]: ...

    @overload
    def scalars(self: AsyncResult[_T, Unpack[TupleAny]]) -> AsyncScalarResult[_T]: ...

    @overload
    def scalars(self, index: _KeyIndexType = 0) -> AsyncScalarResult[Any]: ...

    def scalars(self, index: _KeyIndexType = 0) -> AsyncScalarResult[Any]:
        """An :class:`AsyncScalarResult` of one column (the first by default)."""
        return AsyncScalarResult(self, index)

    def mappings(self) -> AsyncMappingResult:
        """An :class:`AsyncMappingResult`, yielding :class:`RowMapping` objects."""
        return AsyncMappingResult(self)


class AsyncScalarResult(AsyncCommon[_R]):
    """An :class:`AsyncResult` that yields one column's values instead of rows."""

    __slots__ = ()

    _generate_rows = False

    def __init__(self, result: AsyncResult[Unpack[TupleAny]], index: _KeyIndexType) -> None:
        self._real_result = result._real_result
        if result._source_supports_scalars:
            self._metadata = result._metadata
            self._post_creational_filter = None
        else:
            self._metadata = result._metadata._reduce([index])
            self._post_creational_filter = operator.itemgetter(0)
        self._unique_filter_state = result._unique_filter_state
        self._attach(getattr(result, "_runner", None))
        if isinstance(index, int):
            self._take_buffer_of(result, operator.itemgetter(index))
        else:
            self._take_buffer_of(result, lambda row: row._mapping[index])

    def unique(self, strategy: _UniqueFilterType | None = None) -> AsyncScalarResult[_R]:
        """De-duplicate values in Python; applied in place."""
        self._set_unique(strategy)
        return self

    async def partitions(self, size: int | None = None) -> AsyncIterator[Sequence[_R]]:
        """Iterate over lists of up to ``size`` values, one thread hop per list."""
        async for partition in self._partitions(size):
            yield partition

    async def fetchall(self) -> Sequence[_R]:
        """All remaining values (same as :meth:`all`)."""
        return await self._rest()

    async def fetchmany(self, size: int | None = None) -> Sequence[_R]:
        """Up to ``size`` values; an empty list when exhausted.  With no ``size``, as
        many as the sync ``Result.fetchmany()`` returns (``yield_per``, or all)."""
        return await self._many(size)

    async def all(self) -> Sequence[_R]:
        """All remaining values, closing the result."""
        return await self._rest()

    def __aiter__(self) -> AsyncScalarResult[_R]:
        return self

    if TYPE_CHECKING:

        async def __anext__(self) -> _R: ...

    else:
        __anext__ = AsyncCommon._anext  # see AsyncCommon._anext

    async def first(self) -> _R | None:
        """The first value or ``None``; closes the result."""
        return await self._one_row(False, False, False)  # type: ignore[no-any-return]

    async def one_or_none(self) -> _R | None:
        """The only value or ``None``; raises if there is more than one."""
        return await self._one_row(True, False, False)  # type: ignore[no-any-return]

    async def one(self) -> _R:
        """The only value; raises unless exactly one."""
        return await self._one_row(True, True, False)  # type: ignore[no-any-return]


class AsyncMappingResult(_WithKeys, AsyncCommon[RowMapping]):
    """An :class:`AsyncResult` that yields :class:`RowMapping` objects."""

    __slots__ = ()

    _generate_rows = True
    _post_creational_filter = operator.attrgetter("_mapping")

    def __init__(self, result: AsyncResult[Unpack[TupleAny]]) -> None:
        self._real_result = result._real_result
        self._unique_filter_state = result._unique_filter_state
        self._metadata = result._metadata
        if result._source_supports_scalars:
            self._metadata = self._metadata._reduce([0])
        self._attach(getattr(result, "_runner", None))
        self._take_buffer_of(result, operator.attrgetter("_mapping"))

    def unique(self, strategy: _UniqueFilterType | None = None) -> AsyncMappingResult:
        """De-duplicate mappings in Python; applied in place."""
        self._set_unique(strategy)
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncMappingResult:
        """Limit the keys of each mapping."""
        self._refuse_if_buffered("columns")
        return self._column_slices(col_expressions)

    async def partitions(self, size: int | None = None) -> AsyncIterator[Sequence[RowMapping]]:
        """Iterate over lists of up to ``size`` mappings, one thread hop per list."""
        async for partition in self._partitions(size):
            yield partition

    async def fetchall(self) -> Sequence[RowMapping]:
        """All remaining mappings (same as :meth:`all`)."""
        return await self._rest()

    async def fetchone(self) -> RowMapping | None:
        """The next mapping, or ``None`` when exhausted."""
        return await self._next_row()  # type: ignore[no-any-return]

    async def fetchmany(self, size: int | None = None) -> Sequence[RowMapping]:
        """Up to ``size`` mappings; an empty list when exhausted.  With no ``size``, as
        many as the sync ``Result.fetchmany()`` returns (``yield_per``, or all)."""
        return await self._many(size)

    async def all(self) -> Sequence[RowMapping]:
        """All remaining mappings, closing the result."""
        return await self._rest()

    def __aiter__(self) -> AsyncMappingResult:
        return self

    if TYPE_CHECKING:

        async def __anext__(self) -> RowMapping: ...

    else:
        __anext__ = AsyncCommon._anext  # see AsyncCommon._anext

    async def first(self) -> RowMapping | None:
        """The first mapping or ``None``; closes the result."""
        return await self._one_row(False, False, False)  # type: ignore[no-any-return]

    async def one_or_none(self) -> RowMapping | None:
        """The only mapping or ``None``; raises if there is more than one."""
        return await self._one_row(True, False, False)  # type: ignore[no-any-return]

    async def one(self) -> RowMapping:
        """The only mapping; raises unless exactly one."""
        return await self._one_row(True, True, False)  # type: ignore[no-any-return]


class AsyncTupleResult(AsyncCommon[_R], TypingOnly, Generic[_R]):
    """Typing-only view of an :class:`AsyncResult` whose rows are typed as
    tuples; at runtime it is the :class:`AsyncResult` itself."""

    __slots__ = ()

    if TYPE_CHECKING:  # the AsyncResult methods, with rows typed as _R

        def partitions(self, size: int | None = None) -> AsyncIterator[Sequence[_R]]: ...

        async def fetchone(self) -> _R | None: ...

        async def fetchall(self) -> Sequence[_R]: ...

        async def fetchmany(self, size: int | None = None) -> Sequence[_R]: ...

        async def all(self) -> Sequence[_R]: ...

        def __aiter__(self) -> AsyncIterator[_R]: ...

        async def __anext__(self) -> _R: ...

        async def first(self) -> _R | None: ...

        async def one_or_none(self) -> _R | None: ...

        async def one(self) -> _R: ...

        @overload
        async def scalar_one(self: AsyncTupleResult[tuple[_T]]) -> _T: ...

        @overload
        async def scalar_one(self) -> Any: ...

        async def scalar_one(self) -> Any: ...

        @overload
        async def scalar_one_or_none(self: AsyncTupleResult[tuple[_T]]) -> _T | None: ...

        @overload
        async def scalar_one_or_none(self) -> Any | None: ...

        async def scalar_one_or_none(self) -> Any | None: ...

        @overload
        async def scalar(self: AsyncTupleResult[tuple[_T]]) -> _T | None: ...

        @overload
        async def scalar(self) -> Any: ...

        async def scalar(self) -> Any: ...
