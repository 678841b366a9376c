-- A planner keeps the plans of the goals it is busy with in memory between batches rather than
-- reading every task again (docs/architecture.md, "Kept plans"). ``kept_by`` names the planner
-- whose kept plan follows the goal: a batch of another planner takes it over. ``revision`` is
-- added to by everything else that changes a goal's tasks (a fired timer, a human's answer, a
-- retry, a record-by-record retry of a failed batch), in the statement that locks the goal. A
-- kept plan is trusted only while both are as its batch left them.
alter table goals add column kept_by text, add column revision bigint not null default 0;
