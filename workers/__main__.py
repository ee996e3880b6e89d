"""``python -m workers`` is the ``feedmill`` command."""

from workers.cli import main

main()
