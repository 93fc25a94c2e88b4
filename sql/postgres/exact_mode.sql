-- rowcast exact mode for "messages": rows are read in transaction order, so
-- rows are delivered exactly once whatever allocates their ids and whenever
-- they commit. rowcast uses the column when it finds it; it never adds it.
-- Adding the column rewrites the table (existing rows share one transaction id).
ALTER TABLE "messages" ADD COLUMN "rowcast_txid" xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX CONCURRENTLY "messages_rowcast_txid" ON "messages" ("rowcast_txid", "id");
-- To undo:
-- DROP INDEX CONCURRENTLY "messages_rowcast_txid";
-- ALTER TABLE "messages" DROP COLUMN "rowcast_txid";
