"""Benchmarks of tinyllm against hand-written PyTorch and nanoGPT's figures (see RESULTS.md)."""
