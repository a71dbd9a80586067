"""The names of a store's fixed places and of a generation's record: one spelling for the
layout, the generations and the no-op sync, which must decide before it imports either
(this module imports nothing)."""

LAYOUT_VERSION = 1
BASE = f"v{LAYOUT_VERSION}"  # everything a store holds is below `<root>/v1/`
ENVS = "envs"  # envs/<project>/gen-<N>, envs/<project>/current
CURRENT = "current"
PYTHON = "python"  # the CPythons uv installs into the store
ROOTS = "roots"
MODEL_ROOTS = "models"  # roots/models/<project>.json
GENERATION_RECORD = "gpulock-generation.json"
# What a generation holds besides the lock's packages (its sitecustomize, its scripts): a
# gpulock that lays generations out differently raises it, and the next sync builds one. It is
# recorded beside the lock digest, not in it: an older gpulock sharing the volume then keeps
# the newer generation instead of each rebuilding over the other's.
GENERATION_FORMAT = 3
# A generation's record: its seal names every file and link the generation holds.
RECORD_LIMIT = 256 * 2**20
