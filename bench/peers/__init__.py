"""Peer orchestrators run on the same DAG shapes as the mesh: Celery and DBOS."""
