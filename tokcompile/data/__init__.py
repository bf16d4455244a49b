"""Input data: image folders, preprocessing at a bundle's input size, ImageNet-1k labels.

Its own module at the bottom of the layers (beside ``models``, importing neither runtime nor
verify), so that calibration (``runtime``) and checks (``verify``) preprocess images with the
same function.
"""
