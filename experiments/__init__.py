"""Experiments for `keras_vrnn`: data loading, synthetic tasks and run scripts."""
