"""``python -m edgekit``: the same as the ``edgekit`` command (the demo starts ``serve`` this way)."""

from edgekit.cli import main

main()
