"""The whole settings a collection last ran with (CollectConfig as JSON: concurrency, budget,
limit, batch API... beside the request parameters in `params`), so resuming it from the
window or the CLI starts from what the person chose, not from the defaults."""

SQL = """
ALTER TABLE collections ADD COLUMN settings TEXT;
"""
