"""A stable id for the workspace: API keys in the OS keyring belong to one workspace's
teacher (keyring user `<id>/<teacher>`), so two workspaces with a teacher of the same name
never share or overwrite each other's key. A copied workspace folder keeps the id (it is
the same workspace, with the same keys)."""

import uuid


def upgrade(con) -> None:
    con.execute("CREATE TABLE workspace_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO workspace_info (key, value) VALUES ('id', ?)", (uuid.uuid4().hex,))
