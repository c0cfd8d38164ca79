"""sealog client: everything a party needs to trust the log without trusting the server."""
