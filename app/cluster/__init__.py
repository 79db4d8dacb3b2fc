"""Many machines behind one address (docs/cluster.md): `latentcast cluster` runs the server core as one Ray actor
per GPU (or per node) and a front door that places each new session on the worker whose admission forecast
accepts it, then sends the client there. Sessions never move. Nothing here is imported by `latentcast serve`:
one machine runs without Ray."""
