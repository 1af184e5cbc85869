-- saga_fsm PostgreSQL schema, migration 5: the console's list, filtered by status.
-- Append-only: never edit, add the next number instead.
--
-- The console lists sagas newest first, keyset-paginated on (created_at, saga_id):
-- unfiltered, that walks saga_fsm_sagas_created_idx backwards. Filtered by a status
-- (compensated, failed, running...), a rare one would make that walk read most of the
-- table; this index holds each status's sagas in the list's own order, so the page is
-- an index range read whatever the table's size. A whole state (running:charge) is a
-- further filter on that range.
CREATE INDEX saga_fsm_sagas_status_created_idx
    ON saga_fsm_sagas (split_part(state, ':', 1), created_at, saga_id COLLATE "C");

-- "Id starts with": ids compared byte by byte (text_pattern_ops), whatever the
-- database's collation, so a prefix is an index range. Ids never change: only the
-- insert of a new saga pays for it.
CREATE INDEX saga_fsm_sagas_id_pattern_idx ON saga_fsm_sagas (saga_id text_pattern_ops);
