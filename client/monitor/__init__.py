"""The monitor and the auditor: parties that check the log from outside.

``follow`` polls logs and verifies each new checkpoint (``config`` says which logs
and how, ``state`` keeps the last trusted checkpoint), ``evidence`` writes and
re-checks proof of misbehaviour, ``audit`` proves events are in the log, and
``bundle`` is the offline proof an auditor can check with no network.
"""
