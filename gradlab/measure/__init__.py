"""Measuring at the model's sites: the exact norm kernels, the probe of gradlab's models, the recurrent probe, and `watch` for anyone's model."""
