"""The Postgres ledger: migrations, connection pool, and the queries of each agent."""
