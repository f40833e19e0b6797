"""Torch datasets over processor output: sample index, position-map dataset, augmentation and the DataLoader.

Importing the package does no work; import the submodules (data.index, data.dataset, data.augment, data.loader).
"""
