"""`python -m mqtt_rpc`: the `mqtt-rpc` command line."""

from .cli import main

raise SystemExit(main())
