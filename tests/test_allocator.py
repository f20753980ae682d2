"""The allocator tuning the entry points apply: freed memory stays mapped for the next batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ctl_lightning.allocator import ENV

# A fresh process allocates a 64 MiB buffer (a batch's activations), writes it and frees it: how much
# resident memory the free gives back to the system.
PROBE = """
import json, os
import numpy as np
from ctl_lightning.allocator import freed_memory_kept, keep_freed_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
tuned = keep_freed_memory()
buffer = np.ones(16 << 20, dtype=np.float32)
held = resident()
del buffer
print(json.dumps({"tuned": tuned, "recorded": freed_memory_kept(), "released": held - resident()}))
"""


def probe(env_value: str) -> dict:
    env = {**os.environ, ENV: env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults_unless_turned_off():
    tuned, default = probe("1"), probe("0")
    assert tuned["tuned"] and not default["tuned"]
    assert tuned["recorded"] and not default["recorded"]  # what make bench writes beside its figures
    assert default["released"] > 48 << 20, default  # glibc's defaults: unmapped at once, faulted in afresh next time
    assert tuned["released"] < 4 << 20, tuned  # kept mapped, for the next batch to reuse
