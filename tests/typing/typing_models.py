"""The model and session class the typing checks share (imported by the
check_*.py files beside it; never imported by pytest)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_orm import AsyncAttrs, AsyncSession


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class MySession(AsyncSession):
    pass
