"""async_orm: SQLAlchemy's asyncio API over sync drivers, without greenlet.

The public names mirror ``sqlalchemy.ext.asyncio``; change the import and keep
your code.  Every awaitable method runs the real sync SQLAlchemy call on a
worker thread that the session (or connection) owns for its lifetime.
"""

from . import exc as exc
from ._guard import allow_loop_io as allow_loop_io
from ._standin import install_as_sqlalchemy_asyncio as install_as_sqlalchemy_asyncio
from ._worker import call_soon_in_loop as call_soon_in_loop
from ._worker import configure as configure
from ._worker import create_task_in_loop as create_task_in_loop
from .engine import AsyncConnection as AsyncConnection
from .engine import AsyncEngine as AsyncEngine
from .engine import AsyncTransaction as AsyncTransaction
from .engine import async_engine_from_config as async_engine_from_config
from .engine import create_async_engine as create_async_engine
from .engine import create_async_pool_from_url as create_async_pool_from_url
from .result import AsyncMappingResult as AsyncMappingResult
from .result import AsyncResult as AsyncResult
from .result import AsyncScalarResult as AsyncScalarResult
from .result import AsyncTupleResult as AsyncTupleResult
from .scoping import async_scoped_session as async_scoped_session
from .session import AsyncAttrs as AsyncAttrs
from .session import AsyncSession as AsyncSession
from .session import AsyncSessionTransaction as AsyncSessionTransaction
from .session import async_object_session as async_object_session
from .session import async_session as async_session
from .session import async_sessionmaker as async_sessionmaker
from .session import close_all_sessions as close_all_sessions

__version__ = "0.1.0"

__all__ = [
    "AsyncAttrs",
    "AsyncConnection",
    "AsyncEngine",
    "AsyncMappingResult",
    "AsyncResult",
    "AsyncScalarResult",
    "AsyncSession",
    "AsyncSessionTransaction",
    "AsyncTransaction",
    "AsyncTupleResult",
    "allow_loop_io",
    "async_engine_from_config",
    "async_object_session",
    "async_scoped_session",
    "async_session",
    "async_sessionmaker",
    "call_soon_in_loop",
    "close_all_sessions",
    "configure",
    "create_async_engine",
    "create_async_pool_from_url",
    "create_task_in_loop",
    "exc",
    "install_as_sqlalchemy_asyncio",
]
