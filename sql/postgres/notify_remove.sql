DROP TRIGGER IF EXISTS rowcast_notify ON "messages";
-- Once no table uses it: DROP FUNCTION IF EXISTS rowcast_notify();
