"""gpulock: reproducible, incremental GPU environments and models on a pod's volume."""

__version__ = "0.1.0"
