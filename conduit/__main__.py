"""python -m conduit {host,run,demo}: see `python -m conduit --help`."""
from .cli import main

raise SystemExit(main())
