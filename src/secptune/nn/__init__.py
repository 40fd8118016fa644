"""Layers on plaintext or shared tensors: the operations a transformer needs (functional),
softmax and random-feature attention (attention)."""
