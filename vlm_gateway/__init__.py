"""vlm-gateway: the HTTP face (app factory, routes, protocol models, errors, settings)."""
