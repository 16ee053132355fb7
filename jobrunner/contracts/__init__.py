"""The public contract of jobrunner: events, subject names and the wire codec.

Anyone writing their own consumer depends on this package and nothing else.
"""
