"""The VideoMAE models: config, modules, weights loading, masks, label sets."""
