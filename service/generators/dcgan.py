"""The 32 px DCGAN: the layout of the real CelebA DCGAN in ``../shared/data/generated/dcgan32_celeba``
(so the audit's ``dcgan32:FILE`` adapter reads both), its discriminator, and one training step.

Why this recipe (Radford et al. 2016): Adam at 2e-4 with β1 = 0.5, the non-saturating loss, batch
norm in both nets; no augmentation, so a small training set can be memorized, as real GANs trained
on tiny sets do. Plus the R1 penalty (Mescheder et al. 2018, γ = 1): without it, on 32 faces the
discriminator won within 3,000 steps and the generator collapsed onto one blurred face.
"""

from __future__ import annotations

import torch
from torch import nn

NZ = 100  # latent size; z ~ U(−1, 1)^NZ, as the shared checkpoint was trained


class DCGAN32(nn.Module):
    """Generator: z → 128×4×4 → 64×8×8 → 32×16×16 → 3×32×32, tanh output in [−1, 1]."""

    def __init__(self, nz: int = NZ):
        super().__init__()
        self.nz = nz
        self.fc = nn.Linear(nz, 128 * 4 * 4)
        self.deconv1 = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64))
        self.deconv2 = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32))
        self.deconv3 = nn.Sequential(nn.ConvTranspose2d(32, 3, 4, 2, 1, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 128, 4, 4)
        x = self.deconv1(x).relu()
        x = self.deconv2(x).relu()
        return self.deconv3(x).tanh()


class Discriminator32(nn.Module):
    """3×32×32 → 32×16×16 → 64×8×8 → 128×4×4 → one logit (the generator mirrored)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def latent(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, NZ, generator=generator) * 2 - 1


class DCGANTrainer:
    """Both nets and their optimisers; :meth:`step` is one discriminator and one generator update."""

    def __init__(self, seed: int, lr: float = 2e-4, r1: float = 1.0):
        torch.manual_seed(seed)
        self.r1 = r1
        self.g, self.d = DCGAN32(), Discriminator32()
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr, betas=(0.5, 0.999))
        self.bce = nn.BCEWithLogitsLoss()

    def step(self, real: torch.Tensor, rng: torch.Generator) -> float:
        n = len(real)
        fake = self.g(latent(n, rng))
        ones, zeros = torch.ones(n), torch.zeros(n)
        real = real.detach().requires_grad_(self.r1 > 0)
        logits = self.d(real)
        loss_d = self.bce(logits, ones) + self.bce(self.d(fake.detach()), zeros)
        if self.r1 > 0:  # R1: penalise the discriminator's gradient on real images (Mescheder et al. 2018)
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            loss_d = loss_d + self.r1 / 2 * grad.pow(2).sum(dim=(1, 2, 3)).mean()
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        loss_g = self.bce(self.d(fake), ones)
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return float(loss_g.detach())

    def save(self, path: str) -> None:
        """The generator's state dict, which ``dcgan32:FILE`` loads."""
        torch.save(self.g.state_dict(), path)
