"""``webhooks check``: the configuration read as the service would, reported in plain words."""
