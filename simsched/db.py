"""The one helper that turns bare-SQL cursor rows into dicts, and what rows need beside it."""

from datetime import UTC, datetime


def dictfetchall(cursor) -> list[dict]:
    columns = [col[0] for col in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def dictfetchone(cursor) -> dict | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([col[0] for col in cursor.description], row, strict=True))


def as_datetime(value) -> datetime | None:
    """A bare-SQL timestamp as an aware datetime: PostgreSQL gives datetimes, SQLite gives the
    text Django stored (in UTC, without an offset)."""
    if value is None or isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_postgres(connection) -> bool:
    return connection.vendor == "postgresql"


# Primary keys are 64-bit (BigAutoField): anything outside cannot name a row, and SQLite's driver
# raises OverflowError on it instead of finding nothing.
MAX_ID = 2**63 - 1


def is_storable_id(value) -> bool:
    """True for an int (not a bool) that can be a primary key."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
