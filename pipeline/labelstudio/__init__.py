"""Label Studio: local server, labeling config and client calls."""
