"""No URL password in the record of where answers came from.

`responses.endpoint` and `collections.teacher_endpoint` held the teacher's base URL as
typed, with any `user:password@` in it: a credential on disk in every answer's row. They
now hold the URL as shown (`http://user:***@host/v1`, `kdstudio.formatting.url`), which
still tells one endpoint from another. A password is not what makes an endpoint another
one, so a teacher whose password changed still continues its collections.
"""

from kdstudio.formatting import url

TABLES = (("responses", "endpoint"), ("collections", "teacher_endpoint"))


def upgrade(con) -> None:
    for table, column in TABLES:
        rows = con.execute(
            f"SELECT DISTINCT {column} FROM {table} WHERE {column} LIKE '%@%'"
        ).fetchall()
        con.executemany(
            f"UPDATE {table} SET {column}=? WHERE {column}=?",
            [(url(r[0]), r[0]) for r in rows if url(r[0]) != r[0]],
        )
