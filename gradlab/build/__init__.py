"""What a run trains: torch activations and components, models (MLP, CNN, residual), recurrent stacks, datasets, the memory estimate, measurement sites, system facts."""
