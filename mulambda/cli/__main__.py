"""``python -m mulambda.cli``."""

from mulambda.cli import main

main()
