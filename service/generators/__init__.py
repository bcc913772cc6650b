"""Face generators facemem trains and samples itself: the known-membership runs that show the audit
catches a real model that memorizes and stays silent on one that does not.

Modules, one job each: ``render`` (a face photo as a generator's training data sees it), ``dcgan``
(the 32 px DCGAN: generator, discriminator, one training step), ``ddpm`` (a small diffusers UNet
trained as a DDPM, saved as a DDIM pipeline), ``train`` (members file → checkpoints at log-spaced
steps, with a manifest). The CLI is ``scripts/train_generator.py``; the audit reads the checkpoints
through :mod:`service.audit.sources` (``dcgan32:FILE``, ``diffusers:DIR``).
"""
