"""Models applied to videos: the batch engine, classify/embed tasks, writers, evaluation, probes, live, export."""
