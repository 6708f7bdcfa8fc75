from __future__ import annotations

from dispatcher.cli import main

raise SystemExit(main())
