"""Test-suite set-up. Multi-device tests need fake CPU devices, which must be requested
before jax is first imported anywhere in the process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
