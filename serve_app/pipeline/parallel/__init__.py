"""One video over several GPUs of a node: the context-parallel denoiser (docs/parallel.md)."""
