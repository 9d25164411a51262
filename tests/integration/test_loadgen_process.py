"""`bench.server_load.LoadGen`: the load generator's process, as every server-load row starts it.

Its stderr goes to a file, not a pipe nobody reads during a step (a full pipe would stall the
generator mid-step and look like a slow server); when it dies, the error says why, from that file.
"""

from __future__ import annotations

import pytest

from bench.server_load import LoadGen


async def test_a_generator_that_dies_reports_its_traceback() -> None:
    with pytest.raises(RuntimeError, match=r"exited before 'ready'(.|\n)*KeyError: 'target'"):
        await LoadGen.start({"calls": ["c"], "participants": 1, "seconds": 1}, timeout=60)
