"""The browser demo's static files (served at `/` by app.server); a package so they install with the wheel."""
