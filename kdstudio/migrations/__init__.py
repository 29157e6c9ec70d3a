"""Numbered schema migrations: `mNNN_name.py` with `SQL` (a script) or `upgrade(con)`.

Never edit a migration that has shipped; add the next number instead.
"""
