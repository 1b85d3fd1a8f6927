"""The lot side of the bridge: HTTP uplink, sessions and tokens, repeat detection."""
