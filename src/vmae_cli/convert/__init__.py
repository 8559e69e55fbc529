"""Foreign VideoMAE checkpoints -> model folders in the Hugging Face layout."""
