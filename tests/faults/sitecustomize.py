"""Started by Python in every process of a test cluster's node (this folder is on its PYTHONPATH):
turns on the fault injections the node's environment asks for. Tests only."""

from nan_loss import install_from_env

install_from_env()
