-- tasks (goal_id, plan_version, step_id, kind) is unique, and its index serves every lookup by
-- goal_id as well: a second index on goal_id alone was one more index write per task stored.
drop index tasks_goal;
