"""``python -m skimgfeat``: the same as the ``skimgfeat`` command."""

from .cli import main

raise SystemExit(main())
