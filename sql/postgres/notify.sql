-- rowcast NOTIFY doorbell for "messages": rows are still read by rowcast's
-- normal query, so a lost or folded notification never loses a row.
CREATE OR REPLACE FUNCTION rowcast_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rowcast', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS rowcast_notify ON "messages";
CREATE TRIGGER rowcast_notify AFTER INSERT OR UPDATE OR DELETE ON "messages"
    FOR EACH STATEMENT EXECUTE FUNCTION rowcast_notify();
