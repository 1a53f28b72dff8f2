"""Tested helpers behind the federated skin-lesion notebook series."""
