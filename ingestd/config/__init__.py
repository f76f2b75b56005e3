"""The YAML config: loading it with file:line:col problems, secret references."""
