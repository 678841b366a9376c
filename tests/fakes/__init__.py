"""Local stand-ins for outside services that the mesh talks to over a real protocol."""
