"""Count autoencoder trained across molecules (torch; no AnnData).

``module`` holds the network, ``data`` the sparse batching and thinning, ``train`` the training loop with
early stopping on held-out molecules and the inference modes.
"""
