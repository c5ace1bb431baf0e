"""`quarry console`: a web debug console over the public gRPC API (debug answers), served on loopback."""
