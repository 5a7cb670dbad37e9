"""Scheduling: which controller takes a request, the bounded wait queue, and what outcomes mean."""
