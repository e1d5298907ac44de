"""Everything that touches torch and diffusers: loading models and running stages."""
