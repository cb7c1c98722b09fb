"""Experiments: the measurements that chose the codec's numbers (see README.md here).

Not part of the installed package; they import only its public API.
"""
