"""The whole suite runs with ENV=development (the well-known secrets), as the stack's services do:
production is the default, and tests/app/test_settings.py shows what it refuses."""

from __future__ import annotations

import os

os.environ.setdefault("ENV", "development")
