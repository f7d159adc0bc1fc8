"""DNS records for load balancers: RFC 2136 updates with TSIG and external-dns's TXT ownership
registry. `DNSUpdater` (updater.py) is the consumer the daemon runs; records.py and planner.py are
pure; rfc2136.py talks to the servers (dnspython)."""
