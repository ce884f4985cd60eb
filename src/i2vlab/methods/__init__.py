"""One LightningModule per method, on the shared :class:`~i2vlab.methods.base.VideoDiffusionModule`."""
