"""``python -m mulambda``."""

from mulambda.cli import main

main()
