"""``python -m cim up|server|route|client``."""

from cim.cli import cim_main

cim_main()
