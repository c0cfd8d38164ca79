"""Generated protocol buffer code for the sealog v1 API."""
