"""The studio window: the only package that imports Qt. It calls the core and shows what it reports."""
