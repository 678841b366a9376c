-- Goals, tasks and attempts are updated several times each while a goal runs (status, attempt,
-- step count, outcome). Leaving room in each page lets Postgres update a row in place without
-- touching its indexes (a HOT update); measured on the benchmark's chains, the share of such
-- updates went from about 60 to 92% for tasks, 10 to 48% for attempts and 13 to 75% for goals.
alter table goals set (fillfactor = 50);
alter table tasks set (fillfactor = 70);
alter table attempts set (fillfactor = 70);
