"""Pre-training and fine-tuning: recipes, data, the shared loop, the run folder."""
