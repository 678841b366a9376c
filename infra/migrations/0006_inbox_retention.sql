-- Inbox rows are written in time order and deleted once no topic can deliver their events again
-- (housekeeping, agents/ledger/outbox.py). A BRIN index finds the old ones at a fraction of a
-- btree's size and upkeep: the rows of one page were seen within moments of each other.
create index inbox_seen_at on inbox using brin (seen_at);
