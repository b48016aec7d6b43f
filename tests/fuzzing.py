"""The fuzz's seed and size, read once per pytest process (the header and the test share them).

`make test` uses a fixed seed; `make fuzz` sets DYNASCOPE_FUZZ_SEED=random and DYNASCOPE_FUZZ_SCALE=10."""

import os
import random

FIXED_SEED = 20261203
_asked = os.environ.get("DYNASCOPE_FUZZ_SEED", str(FIXED_SEED))
SEED = random.SystemRandom().randrange(2**32) if _asked == "random" else int(_asked)
SCALE = int(os.environ.get("DYNASCOPE_FUZZ_SCALE", "1"))
POSITIVE, NEGATIVE = 20 * SCALE, 10 * SCALE  # generated requests per operation


def header() -> str:
    return f"fuzz: seed {SEED}, {POSITIVE} valid + {NEGATIVE} invalid requests per operation (DYNASCOPE_FUZZ_SEED to rerun)"
