-- Every planner batch asks whether a timer of its mesh has come due. Asked through a join with
-- goals, the question cost as much as hashing all of the mesh's goals, which only grow; with the
-- mesh on the timer it is one probe of a small partial index.
alter table timers add column mesh text;
update timers t set mesh = g.mesh from goals g where g.goal_id = t.goal_id;
alter table timers alter column mesh set not null;
create index timers_mesh_due on timers (mesh, due_at) where fired_at is null;
drop index timers_due;
