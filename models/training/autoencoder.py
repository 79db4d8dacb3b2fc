"""Training of the PatchAutoencoder: PCA initialisation of its linear path, then a short run
that teaches the residual branches the detail the linear code misses."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.patch_autoencoder import PatchAutoencoder


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(images).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3).contiguous()


@torch.no_grad()
def pca_initialise(ae: PatchAutoencoder, images: torch.Tensor, max_patches: int = 200_000, seed: int = 0) -> float:
    """Set the linear path to the whitened top principal components of image patches, so latents
    have zero mean and unit variance per channel; returns the variance share they explain."""
    p, c = ae.config.patch_size, ae.config.latent_channels
    patches = F.unfold(images, p, stride=p).transpose(1, 2).reshape(-1, images.shape[1] * p * p).double()
    generator = torch.Generator().manual_seed(seed)
    patches = patches[torch.randperm(len(patches), generator=generator)[:max_patches]]
    mean = patches.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov((patches - mean).T))
    top_values, top_vectors = eigenvalues.flip(0)[:c], eigenvectors.flip(1)[:, :c]
    scale = top_values.clamp_min(1e-8).sqrt()
    encoder_weight = (top_vectors / scale).T  # (c, 3*p*p): project, then divide by the std
    ae.patch_encoder.weight.copy_(encoder_weight.reshape(c, -1, p, p).float())
    ae.patch_encoder.bias.copy_((-encoder_weight @ mean).float())
    ae.patch_decoder.weight.copy_((top_vectors * scale).T.reshape(c, -1, p, p).float())
    # A transposed conv's bias is per channel, not per patch position; patch means hardly vary
    # with position, and the decoder's residual branch learns what is left.
    ae.patch_decoder.bias.copy_(mean.reshape(-1, p * p).mean(1).float())
    return float(top_values.sum() / eigenvalues.sum())


def train_autoencoder(ae: PatchAutoencoder, data: np.ndarray, steps: int, batch: int, lr: float, seed: int, crop: int = 64) -> list[float]:
    """L1 + MSE reconstruction of random crops of images of every style; returns PSNR per step (dB)."""
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    flat = data.reshape(-1, *data.shape[2:])
    history = []
    ae.train()
    for _ in (bar := tqdm(range(steps), desc="autoencoder", unit="step")):
        top, left = rng.integers(0, flat.shape[1] - crop + 1, size=2)
        x = to_tensor(flat[rng.integers(len(flat), size=batch), top : top + crop, left : left + crop])
        recon = ae(x)
        mse = F.mse_loss(recon, x)
        loss = F.l1_loss(recon, x) + mse
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        psnr = float(10 * torch.log10(4.0 / mse.detach()))  # peak-to-peak range 2 in [-1, 1]
        history.append(psnr)
        bar.set_postfix(psnr=f"{np.mean(history[-50:]):.2f}")
    ae.eval()
    return history
