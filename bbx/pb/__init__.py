"""The PB vocabulary both roles share: dialects, update envelopes, endpoints, control errors.

Nothing here imports bbx.master, bbx.slave or bbx.cli.
"""
