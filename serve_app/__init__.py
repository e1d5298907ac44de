"""Text-to-video serving for Wan2.2-TI2V-5B on Ray Serve.

Core modules here import neither Ray nor torch unless they are about Ray or
torch, so most logic is unit-testable without either.
"""
