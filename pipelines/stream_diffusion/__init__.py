"""Stream-batched diffusion (StreamDiffusion): img2img and txt2img with Stream Batch, residual
CFG and the stochastic similarity filter, with all state kept per stream."""
