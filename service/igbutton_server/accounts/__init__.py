"""Accounts that stay connected: token lifecycle, account state, subscription checks."""
