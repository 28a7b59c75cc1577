"""``vehicle-sim`` subcommands; each module defines ``register(subparsers)``."""
