"""Live control: session parameters driven over OSC (UDP) and MIDI (control changes and notes).

Off unless `serve` is given --osc-port or --midi-port (the `live` extra). Every change takes the
path of a WebSocket `update` (`streaming.remote_control`), so it is validated and acknowledged the
same way. docs/live-control.md has the address scheme and the MIDI mapping file.
"""
