"""Models: packaged pretrained LMs (registry, cache, loading), weight layout, kernels, planted toy models.

Submodules are imported where used, so ``probes models`` lists the registry without loading torch.
"""
