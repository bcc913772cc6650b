"""The batch audit as a library: did a face generator invent its faces, copy them, or drop parts
of the distribution? (Work in progress: the audit logic is moving here from scripts/audit.py.)"""
