"""The local Docker target: manifests planned into containers, replaced one by one."""
