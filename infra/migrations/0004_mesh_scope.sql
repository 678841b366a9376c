-- Several meshes (topic prefixes) may share one ledger database. A goal belongs to the mesh whose
-- planner took it in, and only that mesh's planners fire its timers: they publish to their own
-- topics.
alter table goals add column mesh text not null default '';
create index goals_mesh on goals (mesh);
