"""Backbones, the embedding head and the LightningModule that trains them."""
