"""Static KV cache, CUDA-graph decode, sampling, generate() and stream()."""

from .api import GenerationResult, generate, generate_ids, stream
from .runtime import LlamaRuntime
from .sampling import sample

__all__ = ["generate", "generate_ids", "stream", "GenerationResult", "LlamaRuntime", "sample"]
