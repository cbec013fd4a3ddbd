"""Demo: the offline end-to-end run behind `make demo`.

Owns the tiny base model built offline, the sample annotations, the demo config and the runner
that seeds a local Label Studio and runs the flow passed in by the CLI.

May import every stage; no stage imports it. It never imports `flows/` itself.
"""
