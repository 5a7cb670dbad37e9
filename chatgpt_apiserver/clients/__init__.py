"""Clients as tenants: keys by digest, their own limits, budgets and fair share, and usage accounting.

`rules.py` holds the rules of client state, run by `local.py` (in this process) or `redis.py` (shared by
every instance).
"""
