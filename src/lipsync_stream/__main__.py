"""``python -m lipsync_stream``: the command line."""

from .cli import main

raise SystemExit(main())
