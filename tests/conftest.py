"""Test set-up: 8 simulated CPU devices and parsed absl flags, before JAX or Grain import."""

import os
import tempfile

# Optimisation level 0 of the CPU backend halves XLA compile times, which dominate the
# suite; the HLO (and so the arithmetic) is the same, the machine code is less tuned.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# Many tests (and the training processes they start) compile the same programs: a
# persistent compilation cache shared by all of them compiles each only once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"twlv-test-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags

flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
