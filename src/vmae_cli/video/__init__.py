"""Video in: decoding, frame sampling, preprocessing, input discovery, labelled sets. Knows no model."""
