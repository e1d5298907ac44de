"""One module per Ray Serve deployment. Thin: the logic lives in serve_app."""
