"""RAFT optical flow in Flax NNX (network.py) and torchvision weights for it (weights.py)."""
