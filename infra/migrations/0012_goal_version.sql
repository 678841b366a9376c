-- Every write of a goal's state (its row, its tasks, their attempts) goes through the planner's
-- repository, which adds one to the goal's version in the same statement. A planner that kept a
-- goal's state in memory after its own batch reuses it while the version is the one it left
-- (docs/architecture.md, "The planner: a decider and a shell").
alter table goals add column version bigint not null default 0;
