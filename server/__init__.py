"""sealog server: storage, sequencer, proof builder and gRPC service."""
