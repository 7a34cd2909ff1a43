"""The thin Flower layer that launches and records a run (imports Flower)."""

import os

# Offline, quiet defaults; users may override them in their environment.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

# Before any thread allocates: every thread of the process, the ServerApp's among them,
# then allocates from glibc's main arena (see flnorm.runner.malloc_arena).
from flnorm.runner.malloc_arena import one_malloc_arena  # noqa: E402

one_malloc_arena()
