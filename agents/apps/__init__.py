"""Apps the mesh ships (``agents.app.MeshApp``)."""
