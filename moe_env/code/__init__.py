"""`doctor --code`: judge a user's own training code against the installed libraries, statically.

collect.py reads the checkout with ast (never importing it), pins.py reads its declared requirements,
judge.py turns the probe's answers into Findings.
"""
