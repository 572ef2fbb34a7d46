"""The seed's API as a small FastAPI + SQLAlchemy service: the peer simsched is measured against.

`POST /convergence/data` with `{"simulation_id", "loss_value", "step"?}` stores one point in a
table of its own (`peer_convergence_data`) on the same PostgreSQL; without `step` it takes the
next one. Written the way such a service usually is: a synchronous endpoint (FastAPI runs it in
its thread pool), a pydantic model, one SQLAlchemy session per request from a pooled engine.
It is a benchmark peer, not part of simsched: nothing in the server imports it.

    PEER_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/simsched_bench \
      uvicorn bench.peer_seed.app:app --no-access-log --port 8100
"""

import math
import os
from datetime import UTC, datetime

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, field_validator
from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    UniqueConstraint,
    create_engine,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DATABASE_URL = os.environ.get(
    "PEER_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/simsched_bench"
)
engine = create_engine(DATABASE_URL, pool_size=10, max_overflow=10, pool_pre_ping=False)
SessionLocal = sessionmaker(bind=engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class ConvergencePoint(Base):
    __tablename__ = "peer_convergence_data"
    __table_args__ = (UniqueConstraint("simulation_id", "step"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    simulation_id: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    loss_value: Mapped[float] = mapped_column(Float, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


Base.metadata.create_all(engine)


class PointIn(BaseModel):
    simulation_id: int
    loss_value: float
    step: int | None = None

    @field_validator("loss_value")
    @classmethod
    def finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class PointOut(BaseModel):
    id: int
    simulation_id: int
    step: int
    loss_value: float
    timestamp: datetime


def get_session():
    with SessionLocal() as session:
        yield session


app = FastAPI()


@app.post("/empty")
def empty() -> dict:
    return {}


@app.post("/convergence/data", status_code=201, response_model=PointOut)
def add_point(point: PointIn, session: Session = Depends(get_session)) -> ConvergencePoint:  # noqa: B008
    step = point.step
    if step is None:
        last = session.scalar(
            select(func.max(ConvergencePoint.step)).where(
                ConvergencePoint.simulation_id == point.simulation_id
            )
        )
        step = 0 if last is None else last + 1
    row = ConvergencePoint(
        simulation_id=point.simulation_id,
        step=step,
        loss_value=point.loss_value,
        timestamp=datetime.now(UTC),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(409, "step already stored") from None
    return row
