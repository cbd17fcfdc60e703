"""The inner loop: watching, build lanes, input digests, the deployer and the daemon wiring them."""
