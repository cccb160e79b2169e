"""Hydra configuration tree, shipped inside the package as bitnet_train.conf."""
