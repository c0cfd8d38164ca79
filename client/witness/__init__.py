"""The witness: a party that cosigns a log's checkpoints once it has verified them.

``protocol`` is c2sp.org/tlog-witness ``add-checkpoint``, both sides (the
witness's state and checks, and the request a log sends); ``endpoint`` is the
HTTP server that ``sealog witness serve`` runs.
"""
