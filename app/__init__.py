"""The FastAPI application, its routes, the command line and the settings."""
