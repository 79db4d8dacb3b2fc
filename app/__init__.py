"""The FastAPI application, its routes, the command line and the settings."""

__version__ = "0.1.0"
