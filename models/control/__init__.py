"""Creative controls of the image UNet: ControlNets, an IP-Adapter and LoRAs.

They condition the shared UNet per row of a stream batch (`conditioned_unet.py`), so streams
with different controls still share one forward, and nothing a stream chose is ever written
into the base weights (which engines and their disk cache are keyed by).
"""
