"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported."""

import os

# Must happen before the first `import jax` anywhere in the test session: XLA
# reads the flag once, when the CPU backend is created.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
