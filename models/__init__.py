"""Model definitions, presets and loading. Nothing here knows about transports or sessions."""
