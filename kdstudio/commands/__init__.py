"""CLI sub-command groups; each module has `register(subparsers)`. No heavy imports here."""
