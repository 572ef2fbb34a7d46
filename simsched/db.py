"""The one helper that turns bare-SQL cursor rows into dicts."""


def dictfetchall(cursor) -> list[dict]:
    columns = [col[0] for col in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def dictfetchone(cursor) -> dict | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([col[0] for col in cursor.description], row, strict=True))


def is_postgres(connection) -> bool:
    return connection.vendor == "postgresql"
