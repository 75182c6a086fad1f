"""The trusted host process: routes requests to sandboxed tenant workers."""
