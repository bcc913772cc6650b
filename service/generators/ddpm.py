"""A small unconditional DDPM written with diffusers: ``UNet2DModel`` trained with ``DDPMScheduler``'s
noise, saved as a ``DDIMPipeline`` so that it is sampled with DDIM (``diffusers:DIR`` in the audit).

Why this size: about 1.1 M parameters at 32 px train at about 0.4 s per step of 32 on two CPU cores,
so a run that memorizes a few dozen faces fits in well under an hour (Somepalli et al. 2023 and
Gu et al. 2023: small training sets are reproduced, large ones are not).
"""

from __future__ import annotations

import torch


def unet(size: int = 32):
    """The UNet: three levels (32, 64, 64 channels), self-attention at the coarsest."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


class DDPMTrainer:
    """The UNet, its noise schedule (1,000 linear steps) and AdamW; :meth:`step` is one ε-prediction update."""

    def __init__(self, seed: int, size: int = 32, lr: float = 5e-4):
        from diffusers import DDPMScheduler

        torch.manual_seed(seed)
        self.model = unet(size)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr)

    def step(self, real: torch.Tensor, rng: torch.Generator) -> float:
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(real),), generator=rng)
        noise = torch.randn(real.shape, generator=rng)
        pred = self.model(self.scheduler.add_noise(real, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def save(self, folder: str) -> None:
        """A DDIM pipeline folder (``save_pretrained``): ``DiffusionPipeline.from_pretrained`` loads it."""
        from diffusers import DDIMPipeline, DDIMScheduler

        DDIMPipeline(self.model, DDIMScheduler.from_config(self.scheduler.config)).save_pretrained(folder)


def export_half(folder: str, out: str) -> None:
    """A pipeline folder again with its UNet's weights in fp16: half the bytes, for checkpoints kept in
    the repository (``tests/fixtures``); the audit's adapter computes in fp32 on the CPU."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    pipe.unet.half()
    pipe.save_pretrained(out)
