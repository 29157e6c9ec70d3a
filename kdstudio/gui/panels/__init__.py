"""One module per panel; each is a small QWidget over core calls."""
